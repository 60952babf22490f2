"""Every GPU benchmark of the project in one script, in under 8 minutes on one GPU; tables as markdown + JSON.

Sections (each against the real peer, same process, interleaved, medians):

1. StyleGAN synthesis vs NVIDIA's code (``nvidia_synthesis.py``): StyleGAN2 config F 1024 px and
   StyleGAN3-T 256 px, batch 1 and 8, float32 / bfloat16 / float16. NVIDIA's custom CUDA ops are compiled
   with nvcc at first use: this script compiles them first in a child process with a time limit; if that
   fails or runs out of time, NVIDIA's reference path is used and the table says so.
2. Prior sampling and training vs DALLE2-pytorch: ``bench/prior_peers.py --device cuda --quick`` as a
   subprocess (skipped, with a note, if that script is absent or fails).
3. build-data vs clip2latent's workflow (``nvidia_build_data.py``) at 1024 px.

Writes ``bench/results/gpu.md`` and ``bench/results/gpu.json`` (or ``--out DIR``). ``--dry-run`` runs the
same sections at tiny sizes on the CPU in about a minute (the test suite does), so the script cannot rot
between GPU runs. Run under the peers' python (it re-runs itself there when ``bench/.peers`` exists):

    bench/.peers/bin/python bench/gpu.py                # on a machine with a GPU
    bench/.peers/bin/python bench/gpu.py --dry-run --out /tmp/gpu-dry

Without the peers (no ``bench/.peers``, or ``--no-peers``) every latentmap row still runs and the peer
rows are marked "not run" (the output says so): StyleGAN networks of the same shapes are then built by
latentmap's own classes (``gpu_without_peers.py``), and ``prior_peers.py`` skips its DALLE2 rows itself.

    python bench/gpu.py --dry-run --no-peers --out /tmp/gpu-dry   # what CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_PYTHON = HERE / ".peers" / "bin" / "python"
BUDGET_S = 8 * 60
# Sizes: (full GPU run, dry run)
PRIOR_ARGS = {"full": ["--quick"], "dry": ["--quick", "--batch", "2", "--train-batch", "4", "--steps", "4", "--threads", "1"]}
PLAN = {
    "synthesis": {"full": dict(networks=["sg2-ffhq-1024", "sg3-t-256"], batches=[1, 8], reps=5, warmup=2),
                  "dry": dict(networks=["sg2-tiny-32", "sg3-tiny-32"], batches=[1, 2], reps=1, warmup=0)},
    "build_data": {"full": dict(samples=256, batch_size=16, shard_size=128, runs=2, network="sg2-ffhq-1024"),
                   "dry": dict(samples=8, batch_size=4, shard_size=4, runs=1, network="sg2-tiny-32", tiny_clip=True)},
}
SECTIONS = ("synthesis", "prior", "build_data")
TITLES = {"synthesis": "StyleGAN synthesis vs NVIDIA", "prior": "Prior sampling and training vs DALLE2-pytorch",
          "build_data": "build-data vs clip2latent's workflow"}


def peers_available(no_peers: bool) -> bool:
    """True if NVIDIA's code (clip2latent wheel) is importable, re-running under the peers' python when it is not
    here but ``bench/.peers`` exists; False (the peer rows are then not run) without them or with ``--no-peers``."""
    if no_peers:
        return False
    try:
        import clip2latent  # noqa: F401
    except ImportError:
        if PEERS_PYTHON.is_file() and not os.environ.get("LATENTMAP_GPU_BENCH_REEXEC"):
            os.environ["LATENTMAP_GPU_BENCH_REEXEC"] = "1"  # once: the venv's python is a symlink to this one
            os.execv(str(PEERS_PYTHON), [str(PEERS_PYTHON), *sys.argv])
        return False
    return True


def compile_nvidia_ops(timeout_s: float) -> str | None:
    """Build NVIDIA's CUDA ops in a child (cached by torch for this process); None if ready, else why not."""
    code = ("import sys; sys.path.insert(0, %r); import nvidia_nets; nvidia_nets.import_nvidia(); "
            "from torch_utils.ops import bias_act, upfirdn2d, filtered_lrelu; "
            "ok = [m._init() for m in (bias_act, upfirdn2d, filtered_lrelu)]; "
            "print('compiled' if all(ok) else 'failed'); sys.exit(0 if all(ok) else 1)") % str(HERE)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"nvcc did not finish within {timeout_s:.0f} s"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"compile failed: {tail[0][:200]}"
    return None


def force_nvidia_reference_path() -> None:
    """Make NVIDIA's ops take their own reference (pure PyTorch) path in this process."""
    from torch_utils.ops import bias_act, filtered_lrelu, upfirdn2d

    for module in (bias_act, upfirdn2d, filtered_lrelu):
        module._init = lambda: False


def synthesis_section(device: str, dry: bool, remaining: float, peers: bool) -> dict[str, Any]:
    import nvidia_nets
    import nvidia_synthesis

    if not peers:
        import gpu_without_peers

        report = gpu_without_peers.synthesis(device=device, folder=nvidia_nets.CACHE,
                                             **PLAN["synthesis"]["dry" if dry else "full"])
        return {"status": "ran (latentmap rows only)", "note": gpu_without_peers.NOT_RUN, **report}
    note = None
    if device == "cuda":
        nvidia_nets.import_nvidia()
        problem = compile_nvidia_ops(timeout_s=min(240.0, remaining / 3))
        if problem is not None:
            force_nvidia_reference_path()
            note = f"NVIDIA's CUDA ops unavailable ({problem}): NVIDIA timed on its reference path"
    report = nvidia_synthesis.run(device=device, **PLAN["synthesis"]["dry" if dry else "full"])
    if note:
        report["markdown"] += f"\n- {note}"
    return {"status": "ran", "note": note, **report}


def prior_section(device: str, dry: bool, remaining: float, out: Path) -> dict[str, Any]:
    script = HERE / "prior_peers.py"
    extra = PRIOR_ARGS["dry" if dry else "full"]
    command = [sys.executable, str(script), "--device", device, *extra, "--out", str(out / f"prior_peers-{device}.json")]
    shown = " ".join(["bench/.peers/bin/python", "bench/prior_peers.py", "--device", device, *extra])
    if not script.is_file():
        return {"status": "missing", "markdown": f"bench/prior_peers.py is not in this checkout: section skipped ({shown})"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(remaining - 120, 60), cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "command": shown, "markdown": f"`{shown}` ran out of this script's time budget"}
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        return {"status": f"failed (exit {done.returncode})", "command": shown, "markdown": f"`{shown}` failed:\n```\n{tail}\n```"}
    lines = done.stdout.strip().splitlines()
    table = list(iter_last_table(lines))
    result = json.loads((out / f"prior_peers-{device}.json").read_text())
    status, notes = "ran", [f"- command: `{shown}`"]
    if result.get("peer") is None:  # prior_peers.py ran without DALLE2-pytorch: its latentmap rows only
        status = "ran (latentmap rows only)"
        notes.append("- DALLE2-pytorch's rows not run: the peers are not importable")
    return {"status": status, "command": shown, "result": result, "markdown": "\n".join(table + notes)}


def iter_last_table(lines: list[str]):
    """The lines of the last markdown table in ``lines`` (prior_peers prints partial tables as it goes, sometimes
    right before the final one): back from the end to the first header row (the row above a ``|---`` rule)."""
    block: list[str] = []
    for line in reversed(lines):
        if not line.startswith("|"):
            if block:
                break
            continue
        if block and block[-1].startswith("|---"):
            block.append(line)  # the header row
            break
        block.append(line)
    return reversed(block)


def build_data_section(device: str, dry: bool, peers: bool) -> dict[str, Any]:
    import nvidia_build_data
    import nvidia_nets

    from latentmap.precision import precision_problem

    wanted = ("bfloat16",) if dry else ("bfloat16", "float16")
    precisions = tuple(p for p in wanted if precision_problem(p, device) is None)
    if not peers:
        import gpu_without_peers

        report = gpu_without_peers.build_data(device=device, precisions=precisions, folder=nvidia_nets.CACHE,
                                              **PLAN["build_data"]["dry" if dry else "full"])
        return {"status": "ran (latentmap rows only)", "note": gpu_without_peers.NOT_RUN, **report}
    report = nvidia_build_data.run(device=device, precisions=precisions, **PLAN["build_data"]["dry" if dry else "full"])
    return {"status": "ran", **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, a few seconds (the test suite)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder for gpu.md and gpu.json")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds; later sections are skipped past it")
    parser.add_argument("--no-peers", action="store_true",
                        help="latentmap's rows only, even where the peers' virtualenv exists (what CI has)")
    args = parser.parse_args()
    peers = peers_available(args.no_peers)
    if not peers:
        print("bench/gpu.py: the peers (NVIDIA's StyleGAN code, DALLE2-pytorch) are not importable"
              + (" (--no-peers)" if args.no_peers else "") + ": their rows are not run, latentmap's are", flush=True)
    sys.path.insert(0, str(HERE))
    import timing
    import torch

    if args.dry_run:
        device = "cpu"
        torch.set_num_threads(1)
        os.environ.setdefault("LATENTMAP_BENCH_CACHE", str(args.out / "networks"))
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        raise SystemExit("bench/gpu.py: no CUDA device here; use --dry-run to check the script on the CPU")
    import nvidia_nets

    nvidia_nets.CACHE = Path(os.environ.get("LATENTMAP_BENCH_CACHE", nvidia_nets.CACHE))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    command = ("bench/.peers/bin/python bench/gpu.py" if peers else "python bench/gpu.py --no-peers")
    report: dict[str, Any] = {"dry_run": args.dry_run, "device": device, "machine": timing.machine(device),
                              "command": command + (" --dry-run" if args.dry_run else ""), "peers": peers,
                              "sections": {}}
    for name in args.only:
        remaining = args.budget - (time.perf_counter() - started)
        if remaining <= 0:
            report["sections"][name] = {"status": "skipped: over the time budget", "markdown": "skipped: over the time budget"}
            continue
        section_started = time.perf_counter()
        print(f"== {TITLES[name]} ({device}{', dry run' if args.dry_run else ''})", flush=True)
        if name == "synthesis":
            result = synthesis_section(device, args.dry_run, remaining, peers)
        elif name == "prior":
            result = prior_section(device, args.dry_run, remaining, args.out)
        else:
            result = build_data_section(device, args.dry_run, peers)
        result["seconds"] = round(time.perf_counter() - section_started, 1)
        report["sections"][name] = result
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"]["load_average_after"] = timing.load_average()
    stem = "gpu-dry-run" if args.dry_run else "gpu"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / (stem + '.md')} and {stem}.json in {report['seconds']:.0f} s")


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU benchmarks{' (dry run: tiny sizes, CPU)' if report['dry_run'] else ''}", "",
             f"`{report['command']}`: {report['machine']}, {report['seconds']:.0f} s in all", ""]
    if not report["peers"]:
        lines += ["The peers (NVIDIA's StyleGAN code, DALLE2-pytorch) were not importable: their rows were not run.", ""]
    for name, section in report["sections"].items():
        lines += [f"## {TITLES[name]}", "", f"status: {section['status']} ({section.get('seconds', 0)} s)", "",
                  section["markdown"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
