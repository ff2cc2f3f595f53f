"""Timing on a shared machine: what a figure was measured on, synchronising the device, one kernel timed by
``torch.utils.benchmark.Timer`` and several kernels timed in interleaved rounds.

``torch.utils.benchmark`` is imported where a kernel is timed, not at the top: :func:`sync` is used while training
(:mod:`hrn.training.callbacks`), and importing it loads ``torch.utils.cpp_extension``, which logs a warning on a
machine with a CUDA toolkit and no CUDA runtime.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["interleaved", "machine", "measure", "sync"]


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


def _timer(fn: Callable[[], None]):
    """A ``torch.utils.benchmark.Timer`` of ``fn()`` on all of this process's threads (the Timer's default is one
    thread, which is not how the package runs). Its clock synchronises the accelerator around every block."""
    from torch.utils.benchmark import Timer

    return Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def measure(fn: Callable[[], None], min_run_time: float = 0.2):
    """``fn`` timed by ``Timer.blocked_autorange`` (warm-up, a block size that makes the clock's cost negligible,
    blocks until ``min_run_time`` seconds): a ``torch.utils.benchmark.Measurement`` (``median`` / ``iqr`` seconds
    per call)."""
    return _timer(fn).blocked_autorange(min_run_time=min_run_time)


def interleaved(
    fns: dict[str, Callable[[], None]], rounds: int, device: torch.device
) -> list[dict[str, float]]:
    """Seconds per call of each ``fns[k]``, measured in ``rounds`` rounds that each time every function once.

    Why interleaved (``torch.utils.benchmark`` times one statement at a time, it has no paired comparison): on a
    shared machine the speed drifts by tens of percent within a minute, so kernels timed one after the other are
    compared across different conditions; inside a round they share them. Each function is first warmed up and
    its time per call estimated by :func:`measure` (at least 5 ms of blocks); each timing in a round then repeats
    its call enough times to last about 5 ms (sub-millisecond timings are mostly clock noise), and the order flips
    every round so neither kernel always runs first.
    """
    inner = {name: max(1, round(0.005 / measure(fn, min_run_time=0.005).median)) for name, fn in fns.items()}
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
