"""StyleGAN2 parity with NVIDIA's own outputs (fixtures made by NVlabs/stylegan3 on the CPU).

Measured when written (torch 2.15 CPU, 1 thread): mapping bit-identical (0 error); images at most
2.1e-6 of the largest output value (sg2_tiny max |x| = 14.8, sg2_resnet64_clamp max |x| = 2 with
clamping active). The bound asserted is 2e-5 of the largest value, the issue's tolerance; a wrong
gain, padding or filter gives errors orders of magnitude larger.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentmap.errors import LatentmapError
from latentmap_stylegan.ops import make_filter, upsample2d
from latentmap_stylegan.stylegan2 import PER_SAMPLE_RESOLUTION, StyleGAN2Generator, upsample_2x

FIXTURES = Path(__file__).parent / "fixtures" / "stylegan"
REL_TOL = 2e-5


def load_fixture(name: str) -> tuple[StyleGAN2Generator, dict[str, torch.Tensor]]:
    folder = FIXTURES / name
    config = json.loads((folder / "config.json").read_text())
    G = StyleGAN2Generator(**config["init_kwargs"]).eval()
    G.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    cases = {k: v.clone() for k, v in load_file(folder / "cases.safetensors").items()}
    assert G.num_ws == config["num_ws"]
    return G, cases


@pytest.fixture(scope="module", params=["sg2_tiny", "sg2_resnet64_clamp"])
def fixture(request):
    return request.param, *load_fixture(request.param)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= REL_TOL * scale, f"{what}: max abs error {err:.3g} > {REL_TOL} x {scale:.3g}"


def test_mapping_matches_nvidia(fixture):
    name, G, cases = fixture
    with torch.no_grad():
        assert_close_rel(G.mapping(cases["z"], cases["c"]), cases["ws_psi1"], f"{name} ws psi=1")
        assert_close_rel(G.mapping(cases["z"], None, truncation_psi=0.7), cases["ws_psi07"], f"{name} ws psi=0.7")


@pytest.mark.parametrize("ws_key, img_key", [("ws_psi1", "img_ws_psi1"), ("ws_mixed", "img_ws_mixed")])
def test_synthesis_matches_nvidia(fixture, ws_key, img_key):
    name, G, cases = fixture
    with torch.no_grad():
        assert_close_rel(G.synthesis(cases[ws_key], noise_mode="const"), cases[img_key], f"{name} {img_key}")
        # batch 1 folds styles into the weights; batch 4 runs the dense path below 64 px and one
        # sample at a time from 64 px on (sg2_resnet64_clamp): all must match
        assert_close_rel(G.synthesis(cases[ws_key][2:3]), cases[img_key][2:3], f"{name} {img_key} batch 1")


@pytest.mark.parametrize("per_sample_resolution", [4, 1 << 20])
def test_one_sample_at_a_time_and_whole_batch_both_match_nvidia(fixture, per_sample_resolution):
    """CPU batches run the high-resolution blocks one sample at a time: from the first block on, or never."""
    name, G, cases = fixture
    G.synthesis.per_sample_resolution = per_sample_resolution
    try:
        with torch.no_grad():
            img = G.synthesis(cases["ws_psi1"], noise_mode="const")
    finally:
        G.synthesis.per_sample_resolution = PER_SAMPLE_RESOLUTION
    assert_close_rel(img, cases["img_ws_psi1"], f"{name} per-sample from {per_sample_resolution} px")


def test_end_to_end_matches_nvidia(fixture):
    name, G, cases = fixture
    with torch.no_grad():
        assert_close_rel(G(cases["z"]), cases["img_G_psi1"], f"{name} G(z)")
        assert_close_rel(G(cases["z"], truncation_psi=0.7), cases["img_G_psi07"], f"{name} G(z, psi=0.7)")


def test_noise_none_matches_nvidia():
    G, cases = load_fixture("sg2_tiny")
    with torch.no_grad():
        img = G.synthesis(cases["ws_psi1"], noise_mode="none")
    assert_close_rel(img, cases["img_ws_psi1_noise_none"], "noise_mode=none")
    # and it is really different from const noise (the fixture has non-zero noise strengths)
    assert (img - cases["img_ws_psi1"]).abs().max() > 1e-2


def test_random_noise_is_seeded_and_differs_from_const():
    G, cases = load_fixture("sg2_tiny")
    ws = cases["ws_psi1"]
    with torch.no_grad():
        a = G.synthesis(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(0))
        b = G.synthesis(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(0))
        c = G.synthesis(ws, noise_mode="random", noise_generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2
    assert (a - cases["img_ws_psi1"]).abs().max() > 1e-2


def test_polyphase_upsample_equals_zero_insertion_reference():
    f = make_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    expected = upsample2d(x, f, up=2)  # zero insertion + padding + full 2-D FIR
    actual = upsample_2x(x, f)
    assert actual.shape == (2, 3, 10, 14)
    assert (actual - expected).abs().max() < 1e-6


def test_wrong_number_of_ws_layers_is_one_clear_error():
    G, cases = load_fixture("sg2_tiny")
    with pytest.raises(LatentmapError, match=r"expects ws of shape \(B, 8, 32\), got \(4, 7, 32\)"):
        G.synthesis(cases["ws_psi1"][:, :7])


def test_synthesis_is_differentiable_in_ws():
    G, cases = load_fixture("sg2_resnet64_clamp")
    ws = cases["ws_psi1"][:2].clone().requires_grad_(True)
    G.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0


def test_bfloat16_autocast_stays_close():
    G, cases = load_fixture("sg2_tiny")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        img = G.synthesis(cases["ws_psi1"])
    assert img.dtype == torch.float32
    ref = cases["img_ws_psi1"]
    rel = (img - ref).abs().max().item() / ref.abs().max().item()
    assert rel < 0.05, f"bfloat16 autocast drifted {rel:.3g} of the output range"


@pytest.mark.parametrize("groups", [1, 3])
def test_upsampling_conv_equals_transposed_conv_then_nvidias_fir(groups):
    """The CPU path (transposed convolution, one 2-D FIR pass padded by the convolution) against the
    definition: stride-2 transposed convolution, then NVIDIA's upfirdn2d with padding 1 and gain 4."""
    from latentmap_stylegan.ops import upfirdn2d
    from latentmap_stylegan.stylegan2 import conv_up_fir

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16 * groups, 7, 9, generator=gen)
    weight = torch.randn(8 * groups, 16, 3, 3, generator=gen)
    f = make_filter([1, 3, 3, 1])
    actual = conv_up_fir(x, weight, f, groups)
    wt = weight.view(groups, 8, 16, 3, 3).transpose(1, 2).reshape(16 * groups, 8, 3, 3)
    transposed = torch.nn.functional.conv_transpose2d(x, wt, stride=2, groups=groups)
    assert transposed.shape == (2, 8 * groups, 15, 19)
    expected = upfirdn2d(transposed, f, padding=1, gain=4.0)
    assert actual.shape == expected.shape == (2, 8 * groups, 14, 18)
    assert (actual - expected).abs().max() < 1e-5 * expected.abs().max()


def test_orig_architecture_has_torgb_only_in_the_last_block():
    G = StyleGAN2Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                           mapping_kwargs={"num_layers": 1}, channel_base=64, channel_max=8,
                           architecture="orig").eval()
    keys = set(G.state_dict())
    assert "synthesis.b16.torgb.weight" in keys and "synthesis.b8.torgb.weight" not in keys
    assert G.num_ws == 1 + 2 + 2 + 1  # b4 conv1, b8 and b16 conv0/conv1, the last ToRGB
    with torch.no_grad():
        img = G(torch.randn(2, 8, generator=torch.Generator().manual_seed(0)))
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
