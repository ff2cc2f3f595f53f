"""The end-to-end benchmark (``python -m hrn.bench --e2e``): whole ``hrn.train`` epochs on a generated folder,
against what the train and evaluation steps alone allow. Command layer: it composes the train config and runs
:func:`hrn.cli.training.train`."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from hrn.benchmarks.data import write_image_folder
from hrn.benchmarks.timing import interleaved
from hrn.cli.build import build_data, build_module
from hrn.cli.config import CONF_DIR
from hrn.cli.training import train as run_train

__all__ = ["bench_e2e"]


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
        run_train(cfg)
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
