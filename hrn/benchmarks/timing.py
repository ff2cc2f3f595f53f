"""Timing on a shared machine: what a figure was measured on, synchronising the device, and kernels timed in
interleaved rounds."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["interleaved", "machine", "median_seconds", "sync"]


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": torch.get_num_threads(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(
    fns: dict[str, Callable[[], None]], rounds: int, device: torch.device
) -> list[dict[str, float]]:
    """Seconds per call of each ``fns[k]``, measured in ``rounds`` rounds that each time every function once.

    Why interleaved: on a shared machine the speed drifts by tens of percent within a minute, so kernels timed
    one after the other are compared across different conditions; inside a round they share them. Each timing
    repeats its call enough times to last about 5 ms (sub-millisecond timings are mostly clock noise), and the
    order flips every round so neither kernel always runs first.
    """
    inner = {}
    for name, fn in fns.items():  # warm-up, and how many calls make ~5 ms
        fn()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        inner[name] = max(1, round(0.005 / max(time.perf_counter() - start, 1e-6)))
    out = []
    for r in range(rounds):
        row = {}
        for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(inner[name]):
                fns[name]()
            sync(device)
            row[name] = (time.perf_counter() - start) / inner[name]
        out.append(row)
    return out
