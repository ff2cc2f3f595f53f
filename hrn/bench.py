"""``python -m hrn.bench [--quick] [--out bench.json] [--device cpu|cuda]``: speed figures, as JSON and a table
(:mod:`hrn.benchmarks`; ``--e2e``: :mod:`hrn.cli.e2e`).

1. Tree loss, forward + backward at batch 64: the package's formulations (``hrn.losses.TreeLoss`` with
   ``formulation="subtree"``, ``"dense"`` and ``"auto"``, and which one auto picks on this device) against the
   authors' formulation (the dense (N+1) x N state matrix, then a Python loop over the batch for each marginal), on
   the CUB tree and on level-balanced trees of 1,000 / 10,000 / 100,000 nodes (the authors' only where their state
   matrix fits). The kernels are timed in interleaved rounds; a speed-up of auto over another kernel is the median
   of the per-round ratios, with their range.
2. Train step (forward + backward + SGD step) of HRN against a plain torchvision ResNet-50 classifier on the same
   batch: the median ratio over paired runs, and images/s of each; the same for a timm ConvNet and a timm ViT as
   the trunk (``train_step_timm``), and the Fashion-MNIST recipe's step with each stem (``stems``).
3. Data pipeline: images/s of the training loader on image files and on Fashion-MNIST.

Every figure comes with the machine (CPU model and cores, or GPU name) and the settings.
"""

from __future__ import annotations

import argparse
import os

import torch

from hrn.atomic import write_json
from hrn.benchmarks.data import bench_data, bench_small_images
from hrn.benchmarks.tables import data_table, e2e_table, small_table, table
from hrn.benchmarks.timing import machine
from hrn.benchmarks.train_step import bench_stems, bench_timm_train_steps, bench_train_step
from hrn.benchmarks.tree_loss import bench_tree_loss
from hrn.cli.e2e import bench_e2e

__all__ = ["PARTS", "main"]


PARTS = ("tree_loss", "train_step", "train_step_timm", "stems", "data", "small_images")
"""The parts of the full benchmark, in the order they run (``--only``)."""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hrn.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke test")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON (default: bench.json)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--e2e",
        action="store_true",
        help="only the end-to-end hrn.train epoch against the step alone: the paper's setting on a GPU "
        "(ResNet-50, 550 -> 448 px, batch 32, bf16, channels_last, 6,000 / 5,800 images), a CPU-sized one on a CPU",
    )
    parser.add_argument("--compile", action="store_true", help="--e2e with compile=true")
    parser.add_argument(
        "--workers", type=int, default=None, help="loader workers (default: cores - 1, at most 15)"
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"without --e2e: the parts to run, comma-separated, of {','.join(PARTS)} (default: all)",
    )
    args = parser.parse_args(argv)
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown or not only:
        parser.error(f"--only {args.only}: expected some of {','.join(PARTS)}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    result: dict = {"machine": machine(device), "quick": args.quick}
    if args.e2e:
        workers = args.workers if args.workers is not None else min(15, max(1, (os.cpu_count() or 2) - 1))
        if device.type == "cuda":
            sizes = dict(train=6000, test=5800, resize=550, crop=448, batch=32, trunk="resnet50")
            speed = dict(precision="bf16-mixed", channels_last=True)
        else:  # what a 2-core CPU gets through in minutes: the same pipeline, a small model and image
            n = 64 if args.quick else 320
            sizes = dict(train=n, test=n // 2, resize=128, crop=112, batch=16, trunk="resnet18")
            speed = dict(precision="32-true", channels_last=False)
        result["e2e"] = bench_e2e(
            device, **sizes, **speed, workers=workers, compile=args.compile, epochs=2 if args.quick else 3
        )
        report = e2e_table(result["e2e"])
    else:
        lines = []
        if "tree_loss" in only:
            result["tree_loss"] = bench_tree_loss(args.quick, device)
        if "train_step" in only:
            result["train_step"] = bench_train_step(args.quick, device)
        if "train_step_timm" in only:
            result["train_step_timm"] = bench_timm_train_steps(args.quick, device)
        if "stems" in only:
            result["stems"] = bench_stems(args.quick, device)
        lines.append(table(result))
        if "data" in only:
            result["data"] = bench_data(args.quick, device, args.workers)
            lines.append(data_table(result["data"]))
        if "small_images" in only:
            result["small_images"] = bench_small_images(args.quick)
            lines.append(small_table(result["small_images"]))
        report = "\n".join(lines)
    write_json(args.out, result)
    print(report)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
