"""``latentmap demo`` in a real headless Chromium: type, generate, see the prompted colour, edit, download.

A reduced shapes run (the README's recipe, smaller) makes the checkpoint; ``python -m latentmap demo``
serves it on 127.0.0.1 on a free port; Selenium drives Debian's ``/usr/bin/chromium`` through
``/usr/bin/chromedriver`` (``bash scripts/setup-browser.sh`` installs them; nothing is downloaded at test
time). The shapes world knows the truth of every latent (``decode_attributes``), so the test checks that
what the page draws is what the prompt asks for, pixel by pixel and latent by latent.

A missing browser fails this test loudly, saying how to install it: it never skips.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_train import reduced_shapes_run
from PIL import Image
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import demo_browser

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # a reduced shapes run: it draws the prompted colour (measured: best of 16 right for all 8 colours)
    run = reduced_shapes_run(tmp_path_factory.mktemp("demo-shapes"), every=400,
                             sample=["sample.prompts=[a red circle]", "sample.candidates=16", "sample.keep=4"])
    return run / "best.safetensors"


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    try:
        demo_browser.check_browser()
    except demo_browser.BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)  # loudly: CI must have the browser (README's test command)
    log = tmp_path_factory.mktemp("demo-log") / "demo.log"
    with demo_browser.demo_server(checkpoint, log=log) as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser-downloads")


@pytest.fixture(scope="module")
def driver(server, downloads):
    with demo_browser.chromium(downloads) as browser:
        yield browser


@pytest.fixture
def page(driver, server):
    return demo_browser.DemoPage(driver, server).open()


def drawn_colour(png: bytes) -> str:
    """The palette colour most of the image's shape pixels have: pixels near a palette colour (shading
    and anti-aliased edges are not) and away from the background (the most common pixel)."""
    from latentmap_shapes import COLOURS
    from latentmap_shapes.vocabulary import COLOUR_RGB

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32).reshape(-1, 3) / 255
    background = np.array(Counter(map(tuple, pixels)).most_common(1)[0][0])
    palette = np.array(COLOUR_RGB, dtype=np.float32)
    distance = np.linalg.norm(pixels[:, None] - palette[None], axis=-1)
    nearest, closeness = distance.argmin(axis=1), distance.min(axis=1)
    shape = (closeness < 0.15) & (np.linalg.norm(pixels - background, axis=1) > 0.3)
    votes = Counter(nearest[shape].tolist())
    assert votes, "no pixel of the image has a palette colour: nothing drawn"
    return COLOURS[votes.most_common(1)[0][0]]


def fetch_pngs(page: demo_browser.DemoPage, sources: list[str]) -> list[bytes]:
    images = [page.fetch(source) for source in sources]
    for data in images:
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as png:
            png.load()
            assert png.format == "PNG" and png.size == (256, 256)  # 64 px shapes, enlarged x4 for the page
    return images


def generate(page: demo_browser.DemoPage, prompt: str, previous: list[str] | None = None) -> list[str]:
    """Best 4 of 16 for ``prompt`` (the sliders set as a user does); the gallery's image sources."""
    for slider, value in (("show", 4), ("candidates", 16)):
        page.set_slider(slider, value)
        page.wait(lambda slider=slider, value=value: page.slider_value(slider) == value, f"slider #{slider} at {value}")
    page.type_into("prompt", prompt)
    page.click("generate")
    sources = page.wait_for_new_images(previous or [], 4)
    page.wait(lambda: prompt in page.status(), f"the status line to name {prompt!r}")
    return sources


def test_the_page_draws_the_prompted_colour_as_real_pngs_with_scores(page, downloads):
    from latentmap_shapes import COLOURS

    import latentmap
    from latentmap.images import tensor_to_pil

    sources = generate(page, "a red circle")
    assert "best 4 of 16 candidates" in page.status()
    captions = page.captions()
    scores = [float(caption.split()[-1]) for caption in captions]
    assert [caption.split(" · ")[0] for caption in captions] == ["#1", "#2", "#3", "#4"]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.3
    pngs = fetch_pngs(page, sources)
    assert drawn_colour(pngs[0]) == "red"
    assert [drawn_colour(png) for png in pngs].count("red") >= 3

    # the downloads: the latents decode to red shapes, and render to exactly the images shown
    latents_file = page.download("download-latents", downloads, ".safetensors")
    per_layer = load_file(str(latents_file))["per_layer"]
    generator = latentmap.get_generator("shapes")
    assert [COLOURS[i] for i in generator.decode_attributes(per_layer)["colour"].tolist()].count("red") >= 3
    with torch.no_grad():
        rendered = generator.synthesize(per_layer)
    for png, image in zip(pngs, rendered):
        shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)[::4, ::4]
        assert np.abs(shown - np.asarray(tensor_to_pil(image), dtype=np.int16)).max() <= 1
    archive = page.download("download-images", downloads, ".zip")
    assert archive.stat().st_size > 4 * len(PNG_SIGNATURE)


def test_moving_the_edit_strength_rerenders_the_current_latents(page):
    sources = generate(page, "a red circle")
    before = fetch_pngs(page, sources)
    page.type_into("positive", "a blue circle")
    page.type_into("negative", "a red circle")
    page.click("discover")
    page.wait(lambda: "direction 'a blue circle' - 'a red circle' found" in page.status(), "the direction")
    page.press_slider_keys("strength", "ARROW_RIGHT", 8)  # click focuses the middle (0), then +8 x 0.25
    edited_sources = page.wait_for_new_images(sources, 4)
    page.wait(lambda: "at strength +2" in page.status(), "the edit at strength +2")
    assert page.slider_value("strength") == 2.0
    after = fetch_pngs(page, page.image_sources())
    assert edited_sources and all(a != b for a, b in zip(before, after))
    difference = [np.abs(np.asarray(Image.open(io.BytesIO(a)), dtype=np.int16)
                         - np.asarray(Image.open(io.BytesIO(b)), dtype=np.int16)).mean() for a, b in zip(before, after)]
    assert min(difference) > 1.0  # visibly different images, not a re-encoding


def test_bad_input_gets_a_message_on_the_page_never_a_traceback(page):
    page.type_into("prompt", "   ")
    page.click("generate")
    assert page.wait_for_error("Prompt is empty") == "Prompt is empty: type what to draw, e.g. 'a blue star'"
    page.click("discover")
    page.wait_for_error("Positive prompt is empty")
    assert "Traceback" not in page.driver.page_source


def test_values_sent_by_hand_get_one_line(server, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    calls = [
        (("a red circle", 4, 1000, 25, 1.0, 1.0, 0, 0.0), "/generate", "Value 1000 is greater than maximum value 64"),
        (("", 4, 16, 25, 1.0, 1.0, 0, 0.0), "/generate", "Prompt is empty"),
        ((9.5,), "/strength", "nothing to edit yet"),
    ]
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    calls.append(((handle_file(str(text)), 4, 16, 25, 1.0, 1.0, 0, 0.0), "/generate_image", "file"))
    for arguments, endpoint, message in calls:
        with pytest.raises(AppError) as caught:
            client.predict(*arguments, api_name=endpoint)
        assert message in str(caught.value) and "Traceback" not in str(caught.value)


def test_two_tabs_keep_their_own_results(page, downloads):
    from latentmap_shapes import COLOURS

    import latentmap

    first = generate(page, "a red circle")
    first_tab = page.driver.current_window_handle
    page.driver.switch_to.new_window("tab")
    other = demo_browser.DemoPage(page.driver, page.url).open()
    generate(other, "a blue square")
    page.driver.switch_to.window(first_tab)
    assert page.image_sources() == first and "a red circle" in page.status()
    latents_file = page.download("download-latents", downloads, ".safetensors")
    colours = latentmap.get_generator("shapes").decode_attributes(load_file(str(latents_file))["per_layer"])["colour"]
    assert [COLOURS[i] for i in colours.tolist()].count("red") >= 3


def test_the_page_loads_nothing_from_other_hosts(page):
    generate(page, "a green square")
    requested = page.resources()
    assert any("/gradio_api/" in url for url in requested)  # the log does see the page's own requests
    assert page.foreign_requests() == []
