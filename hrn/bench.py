"""``python -m hrn.bench [--quick] [--out bench.json] [--device cpu|cuda]``: speed figures, as JSON and a table
(:mod:`hrn.benchmarks`; ``--e2e``: whole ``hrn.train`` epochs, :func:`bench_e2e`).

1. Tree loss, forward + backward at batch 64: the package's formulations (``hrn.losses.TreeLoss`` with
   ``formulation="subtree"``, ``"dense"`` and ``"auto"``, and which one auto picks on this device) against the
   authors' formulation (the dense (N+1) x N state matrix, then a Python loop over the batch for each marginal), on
   the CUB tree and on level-balanced trees of 1,000 / 10,000 / 100,000 nodes (the authors' only where their state
   matrix fits). The kernels are timed in interleaved rounds; a speed-up of auto over another kernel is the median
   of the per-round ratios, with their range.
2. Train step (forward + backward + SGD step) of HRN against a plain torchvision ResNet-50 classifier on the same
   batch: the median ratio over paired runs, and images/s of each; the same for a timm ConvNet and a timm ViT as
   the trunk (``train_step_timm``), and the Fashion-MNIST recipe's step with each stem (``stems``).
3. Data pipeline: images/s of the training loader on image files (decoded, cached, as shards; 224 and 448 px)
   and on Fashion-MNIST; the memory of a shard set streamed as it grows to 100,000 images and the train step at
   10,000 leaves (7 levels), :mod:`hrn.benchmarks.scale`.

Every figure comes with the machine (CPU model and cores, or GPU name) and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from hrn.atomic import write_json
from hrn.benchmarks.data import bench_data, bench_small_images, write_image_folder
from hrn.benchmarks.scale import bench_scale
from hrn.benchmarks.tables import data_table, e2e_table, small_table, table
from hrn.benchmarks.timing import interleaved, machine
from hrn.benchmarks.train_step import bench_stems, bench_timm_train_steps, bench_train_step
from hrn.benchmarks.tree_loss import bench_tree_loss
from hrn.cli.build import apply_matmul_precision, build_data, build_loggers, build_module, build_trainer
from hrn.cli.config import CONF_DIR

__all__ = ["PARTS", "bench_e2e", "main"]


PARTS = ("tree_loss", "train_step", "train_step_timm", "stems", "data", "small_images")
"""The parts of the full benchmark, in the order they run (``--only``)."""


def _step_rates(module, batch, device: torch.device, precision: str, repeats: int) -> tuple[float, float]:
    """Images/s of the training step alone (forward, both losses, backward, SGD step) and of the evaluation
    step (forward and tree marginals), on one batch kept on ``device``: what the model allows."""
    module = module.to(device)
    images = module.on_after_batch_transfer(batch._replace(images=batch.images.to(device)), 0).images
    targets = batch.targets.to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = module.loss(module._forward(images), targets).total
        loss.backward()
        optimizer.step()

    def eval_step() -> None:
        with torch.no_grad(), torch.autocast(**autocast):
            out = module._forward(images)
            module.probabilities.node_probabilities(out, module.tree_scores)

    module.train()
    train_s = statistics.median(r["train"] for r in interleaved({"train": train_step}, repeats, device))
    module.eval()
    eval_s = statistics.median(r["eval"] for r in interleaved({"eval": eval_step}, repeats, device))
    return images.shape[0] / train_s, images.shape[0] / eval_s


def bench_e2e(
    device: torch.device,
    *,
    train: int,
    test: int,
    resize: int,
    crop: int,
    batch: int,
    trunk: str,
    workers: int,
    precision: str,
    channels_last: bool,
    compile: bool,
    epochs: int = 3,
) -> dict:
    """The whole ``hrn.train`` epoch (loader + train steps + validation on the test split, as the paper's configs
    do) against what the step alone allows: ``allowed_s = train / train rate + test / eval rate``; the figure
    to report is ``ratio = allowed_s / epoch_s`` (1 = the loader costs nothing)."""
    from hrn.training.trainer import fit_and_test, seed_everything  # Lightning, once a run starts

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        root = write_image_folder(tmp / "folder", train, test, classes=min(200, max(10, train // 30)))
        generate_s = time.perf_counter() - start
        overrides = [
            f"run_dir={tmp / 'run'}",
            "dataset=folder",
            f"dataset.root={root}",
            f"dataset.resize={resize}",
            f"dataset.crop={crop}",
            f"dataset.batch_size={batch}",
            f"dataset.num_workers={workers}",
            f"dataset.cache_dir={tmp / 'cache'}",
            "dataset.val_fraction=0",  # validate on the test split, as the paper's configs
            f"model.trunk={trunk}",
            "model.pretrained=false",
            f"channels_last={str(channels_last).lower()}",
            f"compile={str(compile).lower()}",
            f"trainer.precision={precision}",
            f"trainer.max_epochs={epochs}",
            "trainer.accelerator=" + ("gpu" if device.type == "cuda" else "cpu"),
            "trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
            "callbacks.model_checkpoint.save_last=false",
            "logger=csv",
            "+callbacks.epoch_timer._target_=hrn.training.callbacks.EpochTimer",
            f"+callbacks.epoch_timer.out={tmp / 'epochs.jsonl'}",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        data = build_data(cfg)
        start = time.perf_counter()
        data.train.prepare()
        data.test.prepare()
        cache_s = time.perf_counter() - start
        batch0 = next(iter(data.loader("train")))
        train_rate, eval_rate = _step_rates(build_module(cfg, data), batch0, device, precision, 5)
        # the run hrn.train would make of these settings (less its metrics.json): build, fit, test
        apply_matmul_precision(cfg)
        seed_everything(cfg.seed, workers=True)
        fit_and_test(build_trainer(cfg, build_loggers(cfg)), build_module(cfg, data), data)
        epoch_s = [json.loads(line)["seconds"] for line in (tmp / "epochs.jsonl").read_text().splitlines()]
    allowed = train / train_rate + test / eval_rate
    steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    return {
        "setting": {
            "train": train,
            "test": test,
            "resize": resize,
            "crop": crop,
            "batch": batch,
            "trunk": trunk,
            "workers": workers,
            "precision": precision,
            "channels_last": channels_last,
            "compile": compile,
        },  # fmt: skip
        "generate_s": generate_s,
        "cache_build_s": cache_s,
        "step_alone": {
            "train_images_per_s": train_rate,
            "eval_images_per_s": eval_rate,
            "allowed_epoch_s": allowed,
        },
        "epoch_s": epoch_s,
        "steady_epoch_s": steady,
        "e2e_train_images_per_s": train / (steady - test / eval_rate) if steady > test / eval_rate else None,
        "ratio": allowed / steady,
    }


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
            n, resize, crop = (64, 72, 64) if args.quick else (320, 128, 112)
            sizes = dict(train=n, test=n // 2, resize=resize, crop=crop, batch=16, trunk="resnet18")
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
            result["data"]["scale"] = bench_scale(args.quick, device)
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
