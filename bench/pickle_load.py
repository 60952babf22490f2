"""Loading a real-size StyleGAN2 network pickle: wall time and peak memory of latentmap's safe loader.

``make`` writes a config-F FFHQ-shaped pickle (1024 px; G, D and G_ema with random weights, about
the 363 MB of NVIDIA's ``stylegan2-ffhq-1024x1024.pkl``) in NVIDIA's layout, with the writer the
tests use (``tests/stylegan_pickles.py``); D has config F's discriminator tensor shapes.
``load`` times ``load_network_pickle`` in fresh subprocesses and reports the median wall time and
the peak resident memory (``ru_maxrss``) of each, and the peak above what the imports alone take.
``--loader FILE`` times another copy of ``pickle_loader.py`` (e.g. an older revision) instead.

Against NVIDIA's own loader (the peer): ``make-nvidia`` builds config F's G, D and G_ema with NVIDIA's
own classes and pickles them with NVIDIA's persistence (so the file is what NVIDIA's training writes,
source code embedded), under the peers' virtualenv (``bash bench/peers/setup.sh``), and ``compare``
loads that file alternately with latentmap's safe loader and with NVIDIA's ``legacy.load_network_pkl``
(which imports the embedded source: run it only on files you made), each in a fresh subprocess, and
reports the medians and their ratios.

    bench/.peers/bin/python bench/pickle_load.py make-nvidia /tmp/configf-nvidia.pkl
    python bench/pickle_load.py compare /tmp/configf-nvidia.pkl --runs 5
    python bench/pickle_load.py make /tmp/configf.pkl
    python bench/pickle_load.py load /tmp/configf.pkl --runs 5
    git show HEAD~1:plugins/latentmap_stylegan/pickle_loader.py > /tmp/old_loader.py
    python bench/pickle_load.py load /tmp/configf.pkl --runs 5 --loader /tmp/old_loader.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import importlib.util, json, resource, sys, time
import torch
torch.set_num_threads(1)
import latentmap_stylegan.stylegan2, latentmap_stylegan.stylegan3
loader_file = sys.argv[2]
if loader_file:
    spec = importlib.util.spec_from_file_location("loader_under_test", loader_file)
    loader = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
else:
    from latentmap_stylegan import pickle_loader as loader
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
loaded = loader.load_network_pickle(sys.argv[1])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = sum(t.numel() for t in loaded.network.state_dict().values())
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "above_imports_mb": (peak - before) / 1024,
                  "elements": params}))
"""

# NVIDIA's loader, as its own scripts call it: the whole pickle, then the network used for sampling.
NVIDIA_CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
import legacy, dnnlib
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
with dnnlib.util.open_url(sys.argv[1]) as f:
    network = legacy.load_network_pkl(f)["G_ema"]
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = sum(t.numel() for t in network.state_dict().values())
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "above_imports_mb": (peak - before) / 1024,
                  "elements": params}))
"""

PEER_PYTHON = REPO / "bench" / ".peers" / "bin" / "python"


def nvidia_code_folder() -> Path:
    """NVIDIA's StyleGAN code as bundled in the clip2latent wheel of the peers' virtualenv."""
    found = subprocess.run([str(PEER_PYTHON), "-c", "import clip2latent; print(list(clip2latent.__path__)[0])"],
                           capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise SystemExit(f"no peers' virtualenv at {PEER_PYTHON}: run `bash bench/peers/setup.sh` first")
    return Path(found.stdout.strip()) / "stylegan3"


def make_nvidia(path: Path) -> None:
    """Config F (1024 px) G, D, G_ema from NVIDIA's classes with random weights, pickled as its training does."""
    import pickle

    import torch

    sys.path.insert(0, str(Path(list(__import__("clip2latent").__path__)[0]) / "stylegan3"))
    import dnnlib  # noqa: F401  (NVIDIA's; needed by its persistence)
    from training import networks_stylegan2

    torch.manual_seed(0)
    synthesis = dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256)
    G = networks_stylegan2.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                                     mapping_kwargs={"num_layers": 8}, **synthesis).eval().requires_grad_(False)
    D = networks_stylegan2.Discriminator(c_dim=0, img_resolution=1024, img_channels=3, **synthesis).eval().requires_grad_(False)
    G_ema = networks_stylegan2.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                                         mapping_kwargs={"num_layers": 8}, **synthesis).eval().requires_grad_(False)
    G_ema.load_state_dict(G.state_dict())
    with open(path, "wb") as f:
        pickle.dump({"G": G, "D": D, "G_ema": G_ema, "augment_pipe": None, "training_set_kwargs": None}, f)
    print(f"wrote {path}: {path.stat().st_size / 2**20:.1f} MiB (NVIDIA's classes, random weights)")


def compare(path: Path, runs: int) -> None:
    """latentmap's loader and NVIDIA's on one file, alternating, fresh processes; medians and ratios."""
    import os

    folder = str(nvidia_code_folder())
    load_average = os.getloadavg()
    children = {
        "latentmap": [sys.executable, "-c", CHILD, str(path), ""],
        "nvidia": [str(PEER_PYTHON), "-c", NVIDIA_CHILD, str(path), folder],
    }
    results: dict[str, list[dict]] = {name: [] for name in children}
    for _ in range(runs + 1):  # the first round warms the page cache and is dropped
        for name, command in children.items():
            proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{name}: " + (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {name: {key: statistics.median(r[key] for r in rows[1:]) for key in ("seconds", "peak_mb", "above_imports_mb")}
               for name, rows in results.items()}
    for name, values in summary.items():
        print(f"{name:9s}: {values['seconds']:.3f} s, peak {values['peak_mb']:.0f} MB "
              f"({values['above_imports_mb']:.0f} MB above its imports)")
    ours, theirs = summary["latentmap"], summary["nvidia"]
    print(f"latentmap / NVIDIA: time {ours['seconds'] / theirs['seconds']:.2f}x, "
          f"memory above imports {ours['above_imports_mb'] / theirs['above_imports_mb']:.2f}x; "
          f"same elements: {results['latentmap'][0]['elements'] == results['nvidia'][0]['elements']}; "
          f"file {path.stat().st_size / 2**20:.1f} MiB; {runs} runs; load average before {load_average[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")


def discriminator_config_f(resolution: int = 1024, img_channels: int = 3):
    """A module tree with config F's (resnet) discriminator tensor names and shapes; random values."""
    import torch

    def layer(out_ch: int, in_ch: int, kernel: int, bias: bool = True, filt: bool = False):
        m = torch.nn.Module()
        m.weight = torch.nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        m.bias = torch.nn.Parameter(torch.zeros(out_ch)) if bias else None
        if filt:
            m.register_buffer("resample_filter", torch.full((4, 4), 1 / 16))
        return m

    def dense(out_f: int, in_f: int):
        m = torch.nn.Module()
        m.weight = torch.nn.Parameter(torch.randn(out_f, in_f))
        m.bias = torch.nn.Parameter(torch.zeros(out_f))
        return m

    channels = {res: min(32768 // res, 512) for res in (2 ** i for i in range(2, resolution.bit_length()))}
    D = torch.nn.Module()
    res = resolution
    while res > 4:
        tmp, out = channels[res], channels[res // 2]
        block = torch.nn.Module()
        if res == resolution:
            block.fromrgb = layer(tmp, img_channels, 1)
        block.conv0 = layer(tmp, tmp, 3)
        block.conv1 = layer(out, tmp, 3, filt=True)
        block.skip = layer(out, tmp, 1, bias=False, filt=True)
        setattr(D, f"b{res}", block)
        res //= 2
    epilogue = torch.nn.Module()
    epilogue.mbstd = torch.nn.Module()
    epilogue.conv = layer(channels[4], channels[4] + 1, 3)
    epilogue.fc = dense(channels[4], channels[4] * 16)
    epilogue.out = dense(1, channels[4])
    D.b4 = epilogue
    return D


def make(path: Path, protocol: int = 4) -> None:
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench")]
    import numpy as np
    import torch
    from stylegan_pickles import (
        FakeEasyDict,
        dump_nvidia_pickle,
        payload,
        record_tree,
        sg2_source,
    )
    from stylegan_synthesis import config_f

    marker = Path("/nonexistent/latentmap-bench-marker")
    kwargs = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                  mapping_kwargs=FakeEasyDict(num_layers=8), channel_base=32768, channel_max=512,
                  num_fp16_res=4, conv_clamp=256)
    G = config_f(1024)
    torch.manual_seed(1)
    D = discriminator_config_f()
    contents = OrderedDict(
        G=record_tree(G, sg2_source(marker), kwargs),
        D=record_tree(D, payload(marker) + "class DiscriminatorBlock: pass\n", {"c_dim": 0, "img_resolution": 1024},
                      class_name="Discriminator"),
        G_ema=record_tree(G, sg2_source(marker), kwargs),
        training_set_kwargs=FakeEasyDict(resolution=1024, max_size=np.int64(70000), xflip=True),
        augment_pipe=None,
    )
    dump_nvidia_pickle(path, contents, protocol=protocol)
    print(f"wrote {path}: {path.stat().st_size / 2**20:.1f} MiB")


def load(path: Path, runs: int, loader: str) -> None:
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), loader], capture_output=True, text=True,
                              cwd=REPO, check=False)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for key in ("seconds", "peak_mb", "above_imports_mb"):
        values = [r[key] for r in results]
        print(f"{key}: median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})")
    print(f"network elements: {results[0]['elements']}; file {path.stat().st_size / 2**20:.1f} MiB; "
          f"loader {loader or 'latentmap_stylegan.pickle_loader'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    make_parser = sub.add_parser("make", help="write a config-F-shaped network pickle")
    make_parser.add_argument("path", type=Path)
    make_parser.add_argument("--protocol", type=int, default=4, help="pickle protocol (NVIDIA's files: 3 or 4)")
    load_parser = sub.add_parser("load", help="time loading it in fresh subprocesses")
    load_parser.add_argument("path", type=Path)
    load_parser.add_argument("--runs", type=int, default=5)
    load_parser.add_argument("--loader", default="", help="another pickle_loader.py to time instead")
    nvidia_parser = sub.add_parser("make-nvidia", help="write config F with NVIDIA's classes (peers' python)")
    nvidia_parser.add_argument("path", type=Path)
    compare_parser = sub.add_parser("compare", help="latentmap's loader against NVIDIA's, alternating")
    compare_parser.add_argument("path", type=Path)
    compare_parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.what == "make":
        make(args.path, args.protocol)
    elif args.what == "make-nvidia":
        make_nvidia(args.path)
    elif args.what == "compare":
        compare(args.path, args.runs)
    else:
        load(args.path, args.runs, args.loader)


if __name__ == "__main__":
    main()
