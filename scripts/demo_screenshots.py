"""Screenshots of ``latentmap demo`` for docs/demo.md, taken in headless Chromium like the browser test.

    python scripts/demo_screenshots.py [--checkpoint runs/shapes/best.safetensors] [--out docs/img]

Starts the demo on the checkpoint (default: the README's shapes run), generates the best 4 of 16
for a prompt (docs/img/demo.png), then discovers an edit direction and moves the strength slider
(docs/img/demo_edit.png). Needs what the browser test needs (``bash scripts/setup-browser.sh``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_browser

REPO = demo_browser.REPO


def take(checkpoint: Path, out: Path, prompt: str, positive: str, negative: str, keys: int) -> list[Path]:
    """Both screenshots; returns their paths."""
    with demo_browser.demo_server(checkpoint) as url, demo_browser.chromium() as driver:
        driver.set_window_size(1400, 960)
        page = demo_browser.DemoPage(driver, url).open()
        for slider, value in (("show", 4), ("candidates", 16)):
            page.set_slider(slider, value)
        page.type_into("prompt", prompt)
        page.click("generate")
        sources = page.wait_for_new_images([], 4)
        page.wait(lambda: prompt in page.status(), "the status line")
        page.wait_idle()
        shots = [page.screenshot(out / "demo.png")]
        page.type_into("positive", positive)
        page.type_into("negative", negative)
        page.click("discover")
        page.wait(lambda: "found" in page.status(), "the direction")
        page.press_slider_keys("strength", "ARROW_RIGHT", keys)
        page.wait_for_new_images(sources, 4)
        page.wait(lambda: f"at strength {keys * 0.25:+g}" in page.status(), "the edit")
        page.wait_idle()
        driver.execute_script("document.querySelector('#strength').scrollIntoView({block: 'end'})")
        shots.append(page.screenshot(out / "demo_edit.png"))
        foreign = page.foreign_requests()
        if foreign:
            raise SystemExit(f"the page requested other hosts: {foreign}")
    return shots


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/shapes/best.safetensors"),
                        help="Prior checkpoint; a relative path is relative to the repository (the demo runs there).")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--prompt", default="a large red circle in the top left")
    parser.add_argument("--positive", default="a blue circle")
    parser.add_argument("--negative", default="a red circle")
    parser.add_argument("--keys", type=int, default=6, help="Right-arrow presses on the strength slider (0.25 each).")
    args = parser.parse_args(argv)
    if not (REPO / args.checkpoint).is_file():
        raise SystemExit(f"{args.checkpoint} does not exist: make it with `latentmap run recipes/shapes.yaml`")
    for path in take(args.checkpoint, args.out, args.prompt, args.positive, args.negative, args.keys):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
