"""Timing helpers shared by the benchmarks that compare latentmap with a peer in one process.

Contenders are timed in interleaved rounds (each once per round), so load from other processes on a
shared machine hits every contender alike; the ratio of medians is the result. Every result records
the machine and the load average it was measured under.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def interleaved(contenders: dict[str, Callable[[], Any]], *, warmup: int, reps: int,
                sync: Callable[[], None] = lambda: None,
                report: Callable[[str, float], None] | None = None,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds of each contender per round, ``reps`` rounds after ``warmup`` untimed ones (``report``: each as it comes).

    ``cpu``, if given, receives each round's CPU seconds of this process (all its threads): on a
    machine shared with other jobs, CPU time is not inflated by waiting for a core, so with one
    torch thread the ratio of CPU times is the steadier figure.
    """
    for _ in range(warmup):
        for call in contenders.values():
            call()
            sync()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, call in contenders.items():
            sync()
            started, cpu_started = time.perf_counter(), time.process_time()
            call()
            sync()
            times[name].append(time.perf_counter() - started)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - cpu_started)
            if report is not None:
                report(name, times[name][-1])
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def load_average() -> str:
    """``uptime``'s three load averages, as text."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: CPU model, core count, threads, GPU, torch, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                            "torch": torch.__version__, "load_average": load_average()}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def sync_for(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    device = torch.device(device)
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(result: dict[str, Any], json_path: Path | None) -> None:
    """Print a benchmark's markdown table and, with ``json_path``, write the rest of ``result`` there as JSON."""
    print()
    print(result["markdown"])
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
