"""Figures at iNaturalist's scale, on a synthetic 7-level tree of 10,000 leaves: the memory of a training epoch
streamed from shards as the shard set grows (a process of its own per size) and HRN's train step on that tree
against the CUB tree's."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hrn.benchmarks.timing import interleaved
from hrn.data.augment import Augment
from hrn.data.base import DataSplits, ImageSource, LabelledImages
from hrn.data.files import shipped
from hrn.losses import CompositeLoss
from hrn.nets import HRN
from hrn.tree import Hierarchy

__all__ = ["WIDE_LEVELS", "bench_scale", "wide_tree"]

WIDE_LEVELS = (5, 20, 100, 500, 1_500, 4_000, 10_000)
"""Level sizes of :func:`wide_tree` (16,125 nodes): iNaturalist 2021's 7 ranks, its 10,000 species."""


def wide_tree(level_sizes: tuple[int, ...] = WIDE_LEVELS) -> Hierarchy:
    """A tree with these level sizes, each level's nodes spread evenly over the level above."""
    edges = []
    for lvl in range(1, len(level_sizes)):
        above, here = level_sizes[lvl - 1], level_sizes[lvl]
        edges += [(f"l{lvl}n{j * above // here}", f"l{lvl + 1}n{j}") for j in range(here)]
    return Hierarchy.from_edges(edges)


class _Stamped(ImageSource):
    """Image i made when asked (a flat colour drawn from i): a dataset of any size in no memory."""

    def __init__(self, length: int, size: int) -> None:
        self.length, self.size = length, size

    def __len__(self) -> int:
        return self.length

    def __call__(self, i: int, scale: float = 1.0) -> torch.Tensor:
        colour = torch.tensor([(i * k) % 251 for k in (7, 13, 31)], dtype=torch.uint8)
        return colour.view(3, 1, 1).expand(3, self.size, self.size).contiguous()


def _splits(h: Hierarchy, train: int, size: int = 32) -> DataSplits:
    augment = Augment(size, size, 2)
    leaves = range(h.offsets[-2], h.num_nodes)

    def split(n: int, name: str) -> LabelledImages:
        targets = [leaves[i % len(leaves)] for i in range(n)]
        return LabelledImages(_Stamped(n, size), targets, [f"{name}/{i}" for i in range(n)], augment)

    return DataSplits(h, split(train, "train"), split(64, "val"), split(64, "test"), augment=augment)


_EPOCH = """
import json, sys
from hrn.benchmarks.data import loader_rate
from hrn.data.shards import shards

def status():  # MB: resident in all, its peak (this process's: ru_maxrss carries a parent's over exec), anonymous
    rows = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(rows[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}

before = status()
data = shards(sys.argv[1], batch_size=256, stream=sys.argv[2] == "stream")
rate = loader_rate(data.loader("train"), 1)
print(json.dumps({"before": before, "after": status(), "images_per_s": rate}))
"""


def _memory(h: Hierarchy, sizes: tuple[int, ...], reads: tuple[str, ...], tmp: Path) -> list[dict]:
    """Per shard-set size: the time to write it and, in a fresh process for each way of reading it in ``reads``
    (``by index``, ``dataset.stream=false``; ``streamed``, ``dataset.stream=true``), one training epoch (batch 256,
    no workers): its images/s and the memory it added over the process after its imports: the peak of the resident set, and at
    the end the anonymous memory (the heap: what the process holds) and the file-backed pages (chunks mapped by
    litdata, which the kernel can drop)."""
    from hrn.data.shards import write_shards

    rows = []
    for n in sizes:
        out = tmp / f"shards-{n}"
        start = time.perf_counter()
        write_shards(_splits(h, n), out, {"bench": "scale", "images": n})
        written = time.perf_counter() - start
        for read in reads:
            ran = subprocess.run(
                [sys.executable, "-c", _EPOCH, str(out), "stream" if read == "streamed" else "index"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            epoch = json.loads(ran.stdout.strip().splitlines()[-1])
            before, after = epoch["before"], epoch["after"]
            rows.append(
                {
                    "images": n,
                    "read": read,
                    "write_s": written,
                    "images_per_s": epoch["images_per_s"],
                    "rss_after_imports_mb": before["VmRSS"],
                    "peak_growth_mb": after["VmHWM"] - before["VmRSS"],
                    "anon_growth_mb": after["RssAnon"] - before["RssAnon"],
                    "file_growth_mb": after["RssFile"] - before["RssFile"],
                }
            )
    return rows


def _train_steps(wide: Hierarchy, quick: bool, device: torch.device) -> dict:
    """Interleaved train steps (forward, composite loss, backward, SGD step) of HRN on the CUB tree and on the wide
    tree, the same trunk and batch."""
    size, batch, pairs, trunk = (32, 4, 2, "resnet18") if quick else (224, 8, 5, "resnet50")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    steps, nodes = {}, {}
    for name, h in (("cub", Hierarchy.from_csv(shipped("cub.csv"))), ("wide", wide)):
        net, loss = HRN(h, trunk=trunk).to(device).train(), CompositeLoss(h).to(device)
        targets = (h.offsets[-2] + torch.randint(0, h.level_sizes[-1], (batch,), generator=g)).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

        def step(net=net, loss=loss, targets=targets, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss(net(images), targets).total.backward()
            optimizer.step()

        steps[name], nodes[name] = step, {"levels": h.level_sizes, "nodes": h.num_nodes}
    rounds = interleaved(steps, pairs, device)
    seconds = {k: statistics.median(r[k] for r in rounds) for k in steps}
    return {
        "trunk": trunk,
        "input": size,
        "batch": batch,
        "pairs": pairs,
        "trees": nodes,
        "step_s": seconds,
        "images_per_s": {k: batch / s for k, s in seconds.items()},
        "wide_vs_cub": statistics.median(r["wide"] / r["cub"] for r in rounds),
    }


def bench_scale(quick: bool, device: torch.device) -> dict:
    """The memory of streaming shard sets of growing size and the train step at 10,000 leaves (module docstring)."""
    h = wide_tree()
    sizes = (500, 2_000) if quick else (10_000, 30_000, 100_000)
    reads = ("streamed",) if quick else ("by index", "streamed")  # a fresh interpreter each: 5 s apiece here
    with tempfile.TemporaryDirectory() as tmp:
        memory = _memory(h, sizes, reads, Path(tmp))
    return {
        "tree": {"levels": h.level_sizes, "nodes": h.num_nodes},
        "image": "32 px uint8, batch 256, no workers",
        "memory": memory,
        "anon_mb_per_100k_images": {  # the heap's growth between the smallest and the largest set, scaled
            read: (rows[-1]["anon_growth_mb"] - rows[0]["anon_growth_mb"]) * 1e5 / (sizes[-1] - sizes[0])
            for read in reads
            for rows in [[r for r in memory if r["read"] == read]]
        },
        "train_step": _train_steps(h, quick, device),
    }
