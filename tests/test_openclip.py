"""The open_clip encoder plugin on tiny random open_clip models built from a config written by the test."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import save_file

import latentmap
from latentmap.errors import LatentmapError
from latentmap.weights import sha256_file
from latentmap_openclip.encoder import OpenClipEncoder
from latentmap_openclip.preprocess import Clip2LatentPreprocess, OpenClipPreprocess
from latentmap_openclip.spec import parse_spec

TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red square", "a small blue circle at the top", "a green triangle", "nothing", "a yellow star on the left"]


@pytest.fixture(autouse=True)
def _threads_and_env(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.delenv("LATENTMAP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> OpenClipEncoder:
    return latentmap.get_encoder(f"openclip:{tiny_dir / 'tiny.json'}", device="cpu")


def _picture(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (1, 3, H, W) picture in [-1, 1]: smooth colour gradients, a disc and mild texture."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(-1, 1, height).view(height, 1)
    xs = torch.linspace(-1, 1, width).view(1, width)
    disc = ((xs - 0.2) ** 2 + (ys + 0.1) ** 2 < 0.3).float()
    red = torch.sin(3 * xs + 2 * ys) * 0.6
    green = torch.cos(4 * ys) * 0.5 + disc * 0.4
    blue = xs * ys * 0.8 - disc * 0.5
    texture = F.interpolate(torch.rand(1, 3, height // 4, width // 4, generator=gen), size=(height, width), mode="bilinear")
    image = torch.stack([red, green, blue]).unsqueeze(0) + (texture - 0.5) * 0.4
    return image.clamp(-1, 1)


def _save_png(image: torch.Tensor, path: Path) -> torch.Tensor:
    """Save (1, 3, H, W) in [-1, 1] as an 8-bit PNG; return the quantised picture as the tensor it now is."""
    array = ((image[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    Image.fromarray(array).save(path)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1


# ------------------------------------------------------------------------------------------- the basics


def test_shapes_dtype_frozen_and_registered(tiny):
    assert isinstance(tiny, OpenClipEncoder)
    assert tiny.embed_dim == 16 and tiny.image_size == (32, 32)
    images = _picture(70, 50).repeat(3, 1, 1, 1)
    embeddings = tiny.embed_image(images)
    assert embeddings.shape == (3, 16) and embeddings.dtype == torch.float32
    assert tiny.embed_text(PROMPTS).shape == (5, 16)
    assert tiny.embed_text([]).shape == (0, 16)
    assert tiny.embed_image(images[:0]).shape == (0, 16)
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert torch.isfinite(embeddings).all() and embeddings.std() > 0


def test_gradients_flow_to_images_even_with_a_text_target(tiny):
    target = tiny.embed_text(["a red square"], normalize=True)
    images = _picture(64, 64).requires_grad_(True)
    score = (tiny.embed_image(images, normalize=True) * target).sum()
    score.backward()  # the text embedding must not be an inference tensor here
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    # A small step along the gradient raises the score: the gradient is the real one.
    with torch.no_grad():
        stepped = (images + 1e-2 * images.grad / images.grad.abs().max()).clamp(-1, 1)
        assert (tiny.embed_image(stepped, normalize=True) * target).sum() > score.detach()


def test_text_batching_equals_one_by_one(tiny_dir, tiny):
    small_batches = OpenClipEncoder(str(tiny_dir / "tiny.json"), text_batch_size=2, device="cpu")
    batched = small_batches.embed_text(PROMPTS)
    single = torch.cat([tiny.embed_text([p]) for p in PROMPTS])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(single[0], single[1])  # distinct prompts, distinct embeddings


def test_image_batching_equals_whole_batch(tiny_dir, tiny):
    images = torch.cat([_picture(48, 48, seed=s) for s in range(5)])
    chunked = OpenClipEncoder(str(tiny_dir / "tiny.json"), batch_size=2, device="cpu").embed_image(images)
    torch.testing.assert_close(chunked, tiny.embed_image(images), atol=1e-5, rtol=1e-5)


def test_normalize_flag(tiny):
    raw_text, unit_text = tiny.embed_text(PROMPTS), tiny.embed_text(PROMPTS, normalize=True)
    torch.testing.assert_close(unit_text.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(unit_text, raw_text / raw_text.norm(dim=-1, keepdim=True))
    assert not torch.allclose(raw_text.norm(dim=-1), torch.ones(5), atol=1e-2)  # raw really is raw
    images = _picture(40, 40)
    raw_image = tiny.embed_image(images)
    torch.testing.assert_close(tiny.embed_image(images, normalize=True), F.normalize(raw_image, dim=-1))


def test_low_precision_weights_still_return_float32(tiny_dir, tiny):
    half = OpenClipEncoder(str(tiny_dir / "tiny.json"), dtype="bfloat16", device="cpu")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    images = torch.cat([_picture(32, 32, seed=s) for s in range(2)])
    low, full = half.embed_image(images), tiny.embed_image(images)
    assert low.dtype == torch.float32
    assert F.cosine_similarity(low, full).min() > 0.98
    assert half.embed_text(PROMPTS[:2]).dtype == torch.float32


def test_bad_inputs_and_options_are_one_line_errors(tiny, tiny_dir):
    with pytest.raises(LatentmapError, match=r"\(B, 3, H, W\).*got \(3, 32, 32\)"):
        tiny.embed_image(torch.zeros(3, 32, 32))
    with pytest.raises(LatentmapError, match="float images"):
        tiny.embed_image(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(LatentmapError, match="option 'dtype' must be one of float32, float16, bfloat16; got 'float8'"):
        OpenClipEncoder(str(tiny_dir / "tiny.json"), dtype="float8")
    with pytest.raises(LatentmapError, match="option 'preprocess' must be one of openclip, clip2latent-double-norm; got 'bilinear-magic'"):
        OpenClipEncoder(str(tiny_dir / "tiny.json"), preprocess="bilinear-magic")
    with pytest.raises(LatentmapError, match="option 'batch_size' must be >= 1, got 0"):
        latentmap.get_encoder(f"openclip:{tiny_dir / 'tiny.json'}", batch_size=0)
    with pytest.raises(LatentmapError, match="has no option 'colour'"):
        latentmap.get_encoder(f"openclip:{tiny_dir / 'tiny.json'}", colour="red")
    with pytest.raises(LatentmapError, match=r"encoder 'openclip:.*tiny.json' has no option 'text_batchsize' \(did you mean 'text_batch_size'\?\)"):
        latentmap.get_encoder(f"openclip:{tiny_dir / 'tiny.json'}", text_batchsize=8)


# ------------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("height,width", [(256, 256), (60, 90), (24, 40)])
def test_matches_open_clip_preprocess_of_the_saved_png(tiny, tmp_path, height, width):
    """Embedding the tensor == embedding the same picture saved as PNG and run through open_clip's transform."""
    image = _picture(height, width)
    quantised = _save_png(image, tmp_path / "picture.png")
    transform = image_transform_v2(PreprocessCfg(**tiny._loaded.preprocess_cfg), is_train=False)
    reference_pixels = transform(Image.open(tmp_path / "picture.png")).unsqueeze(0)

    ours_pixels = tiny.preprocess_images(quantised)
    assert ours_pixels.shape == reference_pixels.shape == (1, 3, 32, 32)
    # Pixel-level agreement (normalised units; one 8-bit step is ~0.015 here).
    assert (ours_pixels - reference_pixels).abs().max() < 0.05

    with torch.no_grad():
        reference = tiny.model.encode_image(reference_pixels)
    ours = tiny.embed_image(image)  # the un-quantised tensor, as a generator would hand it over
    assert F.cosine_similarity(ours, reference).item() >= 0.999


@pytest.mark.parametrize("size", [64, 256])
def test_noisy_pictures_differ_by_a_few_steps_yet_embed_alike(tmp_path, size):
    """docs/encoders.md: noisy 64 and 256 px pictures resized to 224 differ from PIL by 4-8 eight-bit steps at a
    few pixels (PIL rounds between its two passes); smooth ones by about one; the embeddings agree regardless."""
    config = json.loads(json.dumps(TINY_CONFIG))
    config["vision_cfg"].update(image_size=224, patch_size=32)
    (tmp_path / "tiny224.json").write_text(json.dumps(config))
    encoder = latentmap.get_encoder(f"openclip:{tmp_path / 'tiny224.json'}", device="cpu")
    transform = image_transform_v2(PreprocessCfg(**encoder._loaded.preprocess_cfg), is_train=False)
    step = 1 / 255 / min(encoder._loaded.preprocess_cfg["std"])  # one 8-bit step, in normalised units
    noise = 0.2 * torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    for image, worst in ((_picture(size, size), 1.6), ((_picture(size, size) + noise).clamp(-1, 1), 9.0)):
        quantised = _save_png(image, tmp_path / "picture.png")
        reference = transform(Image.open(tmp_path / "picture.png")).unsqueeze(0)
        difference = (encoder.preprocess_images(quantised) - reference).abs() / step
        assert difference.max() < worst and difference.mean() < 0.5
        with torch.no_grad():
            cosine = F.cosine_similarity(encoder.embed_image(quantised), encoder.model.encode_image(reference)).item()
        assert cosine > 1 - 1e-5
    assert difference.max() > 3  # noisy: more than the one step smooth pictures stay within


def test_antialiasing_is_what_makes_the_match(tiny, tmp_path):
    """Without anti-aliasing, a 1024 -> 32 downscale would not match open_clip's PIL resize: the check can fail."""
    image = _picture(1024, 1024) + 0.3 * torch.sign(torch.sin(torch.arange(1024.0) * 1.3)).view(1, 1, 1, -1)
    image = image.clamp(-1, 1)
    _save_png(image, tmp_path / "big.png")
    transform = image_transform_v2(PreprocessCfg(**tiny._loaded.preprocess_cfg), is_train=False)
    reference_pixels = transform(Image.open(tmp_path / "big.png")).unsqueeze(0)
    ours = tiny.preprocess_images(image)
    naive = OpenClipPreprocess.from_config(tiny._loaded.preprocess_cfg)
    naive_pixels = (F.interpolate((image + 1) / 2, size=(32, 32), mode="bicubic", align_corners=False) - torch.tensor(
        naive.mean).view(1, 3, 1, 1)) / torch.tensor(naive.std).view(1, 3, 1, 1)
    ours_error = (ours - reference_pixels).abs().mean()
    naive_error = (naive_pixels - reference_pixels).abs().mean()
    assert ours_error < 0.02
    assert naive_error > 5 * ours_error


def test_resize_geometry_follows_open_clip():
    square = OpenClipPreprocess(size=(224, 224), mean=(0, 0, 0), std=(1, 1, 1))
    assert square.resized_size(1024, 1024) == (224, 224)
    assert square.resized_size(300, 500) == (224, 373)  # long side floored, as torchvision does
    assert square.resized_size(500, 300) == (373, 224)
    squash = OpenClipPreprocess(size=(224, 224), mean=(0, 0, 0), std=(1, 1, 1), resize_mode="squash")
    assert squash.resized_size(300, 500) == (224, 224)
    longest = OpenClipPreprocess(size=(224, 224), mean=(0, 0, 0), std=(1, 1, 1), resize_mode="longest", fill_color=0.5)
    assert longest.resized_size(300, 500) == (134, 224)
    padded = longest(torch.ones(1, 3, 300, 500))
    assert padded.shape == (1, 3, 224, 224)
    assert padded[0, 0, 0, 0].item() == pytest.approx(0.5)  # the padding colour
    assert padded[0, 0, 112, 112].item() == pytest.approx(1.0)


def test_clip2latent_double_normalisation_numbers():
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    pre = Clip2LatentPreprocess(size=(32, 32), mean=tuple(mean), std=tuple(std))
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(32, 32)  # 64x64, averages to 0 over 2x2 boxes
    for value, image in [(0.0, checker.expand(1, 3, 64, 64)), (0.9, torch.full((1, 3, 48, 48), 0.9)),
                         (-0.9, torch.full((1, 3, 48, 48), -0.9))]:
        out = pre(image)
        assert out.shape == (1, 3, 32, 32)
        for c in range(3):
            once = min(max(((value + 1) / 2 - mean[c]) / std[c], 0.0), 1.0)
            expected = (once - mean[c]) / std[c]
            torch.testing.assert_close(out[0, c], torch.full((32, 32), expected), atol=1e-5, rtol=0)


def test_clip2latent_mode_on_the_encoder(tiny_dir, tiny):
    quirky = OpenClipEncoder(str(tiny_dir / "tiny.json"), preprocess="clip2latent-double-norm", presize=48, device="cpu")
    assert quirky.identity()["preprocess"] == "clip2latent-double-norm" and quirky.identity()["presize"] == 48
    images = _picture(96, 96).requires_grad_(True)
    quirky.embed_image(images).sum().backward()
    assert images.grad.abs().sum() > 0
    # The squashed, doubly-normalised input is a different picture to the model than the standard one.
    assert F.cosine_similarity(quirky.embed_image(images.detach()), tiny.embed_image(images.detach())).item() < 0.999
    with pytest.raises(LatentmapError, match="presize only applies"):
        OpenClipEncoder(str(tiny_dir / "tiny.json"), presize=256)


# ---------------------------------------------------------------------------------- weights and specs


@pytest.fixture(scope="module")
def tiny_weights(tiny, tiny_dir) -> Path:
    path = tiny_dir / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    return path


def test_at_file_spec_loads_the_weights(tiny, tiny_dir, tiny_weights):
    images = _picture(32, 32)
    other_seed = OpenClipEncoder(str(tiny_dir / "tiny.json"), seed=1, device="cpu")
    assert F.cosine_similarity(other_seed.embed_image(images), tiny.embed_image(images)).item() < 0.99
    loaded = latentmap.get_encoder(f"openclip:{tiny_dir / 'tiny.json'}@{tiny_weights}", seed=1, device="cpu")
    torch.testing.assert_close(loaded.embed_image(images), tiny.embed_image(images))
    torch.testing.assert_close(loaded.embed_text(PROMPTS), tiny.embed_text(PROMPTS))
    identity = loaded.identity()
    assert identity["weights"] == "file" and identity["weights_file"] == "tiny.safetensors"
    assert identity["weights_sha256"] == sha256_file(tiny_weights)
    assert identity["name"] == f"openclip:{tiny_dir / 'tiny.json'}@{tiny_weights}"
    # enough to rebuild it from a checkpoint; device and dtype belong to the machine, not the model
    assert identity["options"]["seed"] == 1 and identity["options"]["batch_size"] == 64
    assert "device" not in identity["options"] and "dtype" not in identity["options"]
    assert "batch_size" not in loaded.registry_identity_options  # how fast it runs is not what it computes
    assert loaded.registry_identity_options["seed"] == 1


def test_weights_option_and_pt_files(tiny, tiny_dir, tmp_path):
    pt_file = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny.model.state_dict()}, pt_file)
    loaded = OpenClipEncoder(str(tiny_dir / "tiny.json"), weights=str(pt_file), seed=3, device="cpu")
    torch.testing.assert_close(loaded.embed_text(PROMPTS[:2]), tiny.embed_text(PROMPTS[:2]))


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_runs_code_is_refused(tiny_dir, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": _Payload(marker)}, evil)  # a real torch file whose unpickling runs os.mkdir
    with pytest.raises(LatentmapError, match=r"cannot load weights .*evil\.pt.*never runs code from a checkpoint"):
        OpenClipEncoder(f"{tiny_dir / 'tiny.json'}@{evil}")
    assert not marker.exists()


def test_wrong_weights_for_the_architecture(tiny_dir, tiny_weights, tmp_path):
    bigger = dict(TINY_CONFIG, embed_dim=24)
    (tmp_path / "bigger.json").write_text(json.dumps(bigger))
    with pytest.raises(LatentmapError) as info:
        OpenClipEncoder(f"{tmp_path / 'bigger.json'}@{tiny_weights}")
    assert "tiny.safetensors" in str(info.value) and "bigger.json" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_files_name_the_path(tiny_dir, tmp_path):
    with pytest.raises(LatentmapError, match=r"path='.*absent\.safetensors' does not exist"):
        OpenClipEncoder("ViT-B-32@" + str(tmp_path / "absent.safetensors"))
    with pytest.raises(LatentmapError, match=r"config .*nope\.json does not exist"):
        OpenClipEncoder(str(tmp_path / "nope.json"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(LatentmapError, match=r"broken\.json is not valid JSON"):
        OpenClipEncoder(str(tmp_path / "broken.json"))
    (tmp_path / "partial.json").write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(LatentmapError, match=r"partial\.json lacks key\(s\) vision_cfg, text_cfg"):
        OpenClipEncoder(str(tmp_path / "partial.json"))


def test_unknown_architecture_lists_close_matches():
    with pytest.raises(LatentmapError) as info:
        OpenClipEncoder("ViT-B-33/openai")
    message = str(info.value)
    assert "unknown open_clip architecture 'ViT-B-33'" in message and "ViT-B-32" in message
    with pytest.raises(LatentmapError, match=r"no pretrained tag 'opnai' for ViT-B-32: did you mean openai"):
        OpenClipEncoder("ViT-B-32/opnai")
    with pytest.raises(LatentmapError, match=r"names no weights: use a pretrained tag \(openclip:ViT-B-32/openai"):
        OpenClipEncoder("ViT-B-32")


@pytest.fixture
def no_clip_cache(monkeypatch, tmp_path):
    """A home without OpenAI's clip cache (so a real ~/.cache/clip on the test machine changes nothing)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)


@pytest.mark.parametrize("var", ["LATENTMAP_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_and_absent_says_which_model_and_how(var, monkeypatch, tmp_path, no_clip_cache):
    monkeypatch.setenv(var, "1")
    with pytest.raises(LatentmapError) as info:
        latentmap.get_encoder("openclip:ViT-B-32/openai", cache_dir=str(tmp_path / "hf"))
    message = str(info.value)
    assert "\n" not in message
    assert "ViT-B-32/openai" in message and "timm/vit_base_patch32_clip_224.openai" in message
    assert "downloads are disabled" in message and str(tmp_path / "hf") in message
    assert "openclip:ViT-B-32@/path/to/weights.safetensors" in message


def _not_on_the_hub(url):
    from types import SimpleNamespace

    from huggingface_hub.errors import RemoteEntryNotFoundError

    return RemoteEntryNotFoundError(f"Entry not found: {url}", response=SimpleNamespace(headers={}, status_code=404, request=None))


def test_tag_resolution_through_the_hub(monkeypatch, tmp_path, no_clip_cache):
    """Tags map to open_clip's Hub files, safetensors first: the cache, else one probe per name, then the download."""
    import huggingface_hub

    from latentmap_openclip.loading import pretrained_file

    calls, probes = [], []
    downloaded = tmp_path / "open_clip_pytorch_model.bin"
    downloaded.write_bytes(b"weights")

    def fake_download(repo_id, filename, *, local_files_only=False, **kwargs):
        calls.append((repo_id, filename, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not in the cache")
        return str(downloaded)

    def fake_probe(url, **kwargs):
        probes.append(url.rsplit("/", 1)[-1])
        if url.endswith(".safetensors"):
            raise _not_on_the_hub(url)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", fake_probe)
    cfg = open_clip.pretrained.get_pretrained_cfg("ViT-B-32", "openai")
    assert pretrained_file("ViT-B-32", "openai", cfg, cache_dir=str(tmp_path / "hf")) == downloaded
    repo = "timm/vit_base_patch32_clip_224.openai"
    assert calls == [(repo, "open_clip_model.safetensors", True), (repo, "open_clip_pytorch_model.bin", True),
                     (repo, "open_clip_pytorch_model.bin", False)]
    assert probes == ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    monkeypatch.setenv("LATENTMAP_OFFLINE", "1")
    calls.clear()
    with pytest.raises(LatentmapError, match="downloads are disabled"):
        pretrained_file("ViT-B-32", "openai", cfg, cache_dir=str(tmp_path / "hf"))
    assert all(local_only for _, _, local_only in calls)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_hub_fails_at_the_first_connection_error_in_one_line(monkeypatch, tmp_path, no_clip_cache,
                                                                            capfd):
    """No network and no HF_HUB_OFFLINE: one HEAD request, then one line naming file, URL, cache and the way out."""
    import huggingface_hub

    port = _closed_port()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    probes = []
    real_probe = huggingface_hub.get_hf_file_metadata
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kw: probes.append(url) or real_probe(url, **kw))
    with pytest.raises(LatentmapError) as info:
        latentmap.get_encoder("openclip:ViT-B-32/openai", cache_dir=str(tmp_path / "hf"))
    message = str(info.value)
    assert "\n" not in message
    for part in ("ViT-B-32/openai", "open_clip_model.safetensors", str(tmp_path / "hf"), "cannot be reached",
                 f"http://127.0.0.1:{port}/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_model.safetensors",
                 "openclip:ViT-B-32@/path/to/weights.safetensors", "weights= option",
                 str(tmp_path / "home" / ".cache" / "clip"), "ViT-B-32.pt"):
        assert part in message, part
    assert len(probes) == 1  # not one per file name, no retries
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # no third-party log lines


# ------------------------------------------------------------------------------ OpenAI's own files


@pytest.fixture
def openai_style_tag(monkeypatch, tiny, tmp_path):
    """A tiny architecture with an ``openai`` tag whose file is a TorchScript archive, as OpenAI's CLIP files are."""
    import hashlib
    import warnings

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "latentmap-test-tiny", json.loads(json.dumps(TINY_CONFIG)))
    archive = tmp_path / "latentmap-test-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, and still how OpenAI's files are made
        reference = open_clip.CLIP(**TINY_CONFIG)
        reference.load_state_dict(tiny.model.state_dict())
        torch.jit.save(torch.jit.script(reference.half().eval()), str(archive))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = f"https://openaipublic.azureedge.net/clip/models/{digest}/latentmap-test-tiny.pt"
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "latentmap-test-tiny",
                        {"openai": {"url": url, "hf_hub": "timm/latentmap-test-tiny.openai/", "quick_gelu": False}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return archive


@pytest.mark.parametrize("where", ["home", "xdg"])
def test_openai_tags_use_the_clip_package_cache(openai_style_tag, tiny, tmp_path, monkeypatch, where):
    folder = tmp_path / "home" / ".cache" / "clip"
    if where == "xdg":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        folder = tmp_path / "xdg" / "clip"
    folder.mkdir(parents=True)
    shutil.copyfile(openai_style_tag, folder / openai_style_tag.name)
    encoder = latentmap.get_encoder("openclip:latentmap-test-tiny/openai", device="cpu")
    assert encoder.identity()["weights_file"] == "latentmap-test-tiny.pt"
    loaded = encoder.model.state_dict()
    assert loaded.keys() == tiny.model.state_dict().keys()
    for name, value in tiny.model.state_dict().items():  # the archive holds float16 weights, as OpenAI's do
        assert loaded[name].dtype == torch.float32 and torch.equal(loaded[name], value.half().float()), name
    assert encoder.embed_text(PROMPTS).shape == (len(PROMPTS), 16)


def test_a_clip_cache_file_with_the_wrong_checksum_is_named(openai_style_tag, tmp_path):
    folder = tmp_path / "home" / ".cache" / "clip"
    folder.mkdir(parents=True)
    (folder / openai_style_tag.name).write_bytes(openai_style_tag.read_bytes()[:1000])
    with pytest.raises(LatentmapError, match=r"latentmap-test-tiny\.pt \(OpenAI's CLIP file.*has SHA-256"):
        latentmap.get_encoder("openclip:latentmap-test-tiny/openai", device="cpu")


def test_a_torchscript_archive_that_would_run_code_is_refused(tiny_dir, tmp_path):
    import pickle
    import zipfile

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(LatentmapError, match=r"evil\.pt.*never runs code from a checkpoint"):
        OpenClipEncoder(f"{tiny_dir / 'tiny.json'}@{evil}")
    assert not marker.exists()


def test_spec_parsing():
    assert parse_spec(None).label == "ViT-B-32/openai"
    spec = parse_spec("ViT-L-14/laion2b_s32b_b82k")
    assert (spec.arch, spec.tag, spec.weights_path) == ("ViT-L-14", "laion2b_s32b_b82k", None)
    spec = parse_spec("ViT-B-32@/w/model.safetensors")
    assert (spec.arch, spec.tag, spec.weights_path) == ("ViT-B-32", None, Path("/w/model.safetensors"))
    assert parse_spec("ViT-B-32", weights="/w/a.bin").weights_path == Path("/w/a.bin")
    spec = parse_spec("/c/tiny.json@/w/tiny.pt")
    assert (spec.config_path, spec.weights_path) == (Path("/c/tiny.json"), Path("/w/tiny.pt"))
    assert parse_spec("hf-hub:timm/ViT-B-16-SigLIP").hf_hub == "timm/ViT-B-16-SigLIP"
    with pytest.raises(LatentmapError, match="both a pretrained tag"):
        parse_spec("ViT-B-32/openai@/w/x.pt")
    with pytest.raises(LatentmapError, match="weights= option names"):
        parse_spec("ViT-B-32@/w/x.pt", weights="/w/y.pt")
    with pytest.raises(LatentmapError, match="no weights path after it"):
        parse_spec("ViT-B-32@")


def test_identity_of_a_random_model_records_config_and_seed(tiny):
    identity = tiny.identity()
    assert identity["weights"] == "random(seed=0)" and identity["config"] == TINY_CONFIG
    assert "weights_sha256" not in identity
    json.dumps(identity)  # JSON-ready for manifests and checkpoints


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_autocast_matches_cpu(tiny_dir, tiny):
    gpu = OpenClipEncoder(str(tiny_dir / "tiny.json"), device="cuda")
    images = torch.cat([_picture(256, 256, seed=s) for s in range(4)])
    on_gpu = gpu.embed_image(images.cuda()).cpu()
    assert on_gpu.dtype == torch.float32
    assert F.cosine_similarity(on_gpu, tiny.embed_image(images)).min() > 0.99
    assert F.cosine_similarity(gpu.embed_text(PROMPTS).cpu(), tiny.embed_text(PROMPTS)).min() > 0.99


def test_builtin_architecture_with_a_local_file(monkeypatch, tiny, tiny_weights):
    """The ARCH@file path goes through open_clip.create_model; a registered tiny config stands in for ViT-B-32."""
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "latentmap-test-tiny", json.loads(json.dumps(TINY_CONFIG)))
    loaded = latentmap.get_encoder(f"openclip:latentmap-test-tiny@{tiny_weights}", device="cpu")
    images = _picture(40, 40)
    torch.testing.assert_close(loaded.embed_image(images), tiny.embed_image(images))
    torch.testing.assert_close(loaded.embed_text(PROMPTS), tiny.embed_text(PROMPTS))
    assert loaded.identity()["arch"] == "latentmap-test-tiny" and loaded.identity()["quick_gelu"] is False
    quick = OpenClipEncoder(f"latentmap-test-tiny@{tiny_weights}", quick_gelu=True, device="cpu")
    assert quick.identity()["quick_gelu"] is True
    assert (quick.embed_image(images) - tiny.embed_image(images)).abs().max() > 1e-3  # another activation really ran


def test_hf_hub_spec_uses_config_and_weights_from_the_cache(monkeypatch, tiny, tiny_dir, tiny_weights):
    import huggingface_hub

    files = {"open_clip_config.json": tiny_dir / "hub_config.json", "open_clip_model.safetensors": tiny_weights}
    files["open_clip_config.json"].write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {"resize_mode": "squash"}}))
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        return str(files[filename])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    hub = latentmap.get_encoder("openclip:hf-hub:someone/tiny-clip", device="cpu")
    assert requested == [("someone/tiny-clip", "open_clip_config.json"), ("someone/tiny-clip", "open_clip_model.safetensors")]
    assert hub.preprocess_images.resize_mode == "squash"
    torch.testing.assert_close(hub.embed_text(PROMPTS), tiny.embed_text(PROMPTS))
    assert hub.identity()["weights"] == "hf-hub:someone/tiny-clip"
