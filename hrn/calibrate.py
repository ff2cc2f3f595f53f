"""``python -m hrn.calibrate ckpt_path=PATH [out=PATH] [per_level=true]``: fit temperatures for the tree scores (one
per level, or one) and the leaf softmax on the validation split by negative log-likelihood, write them into a new
checkpoint, and print the per-level expected calibration error on the test split before and after
(:mod:`hrn.calibration`). Predict, evaluate, export and Grad-CAM use the temperatures of a calibrated model."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from hrn.calibration import calibration_ece, collect_outputs, fit_temperatures, save_calibrated
from hrn.checkpoints import load_checkpoint
from hrn.cli.build import checkpoint_data
from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.data.base import DataError
from hrn.deploy.inference import pick_device

__all__ = ["calibrate", "default_out", "main"]


def default_out(source: str | Path) -> Path:
    """``<name>-calibrated.ckpt`` beside a checkpoint, ``<name>-calibrated/`` beside a shared folder."""
    source = Path(source)
    if source.is_dir():
        return source.with_name(f"{source.name}-calibrated")
    return source.with_name(f"{source.stem}-calibrated{source.suffix}")


def calibrate(cfg: DictConfig) -> dict:
    """Calibrate ``cfg.ckpt_path``; returns the calibration record, the test ECE before and after, and the file."""
    trust = bool(cfg.get("trust_checkpoint", False))
    model = load_checkpoint(cfg.ckpt_path, trust)
    data = checkpoint_data(cfg, model)
    if data.val is data.test:
        raise DataError(
            f"the {data.name} dataset validates on its test split (dataset.val_fraction=0), and temperatures fitted "
            "there would be tested on what they were fitted to; pass dataset.val_fraction=0.1 (a held-out share of "
            "the training images) or a dataset with a val split"
        )
    device = pick_device(str(cfg.device))
    h, source = model.hierarchy, model.tree_scores
    calibration = fit_temperatures(
        collect_outputs(model.net, data.loader("val"), source, device), h, source, cfg.per_level
    )
    calibration["split"] = "val"
    test = collect_outputs(model.net, data.loader("test"), source, device)
    before = calibration_ece(test, h, source, model.calibration)
    after = calibration_ece(test, h, source, calibration)
    out = save_calibrated(cfg.ckpt_path, calibration, cfg.out or default_out(cfg.ckpt_path), trust)
    print(f"{'level':<8}{'classes':>8}{'ECE before':>12}{'ECE after':>12}   (marginals, test split, 15 bins)")
    for lvl, (n, b, a) in enumerate(zip(h.level_sizes, before, after, strict=True), start=1):
        print(f"{lvl:<8}{n:>8}{b:>12.4f}{a:>12.4f}")
    if calibration["tree_temperature"] is not None:
        print(
            "tree temperatures per level: " + ", ".join(f"{t:.4g}" for t in calibration["tree_temperature"])
        )
    print(f"leaf temperature: {calibration['leaf_temperature']:.4g}")
    for name, nll in calibration["nll"].items():
        print(f"{name} NLL on the validation split: {nll['before']:.4f} -> {nll['after']:.4f}")
    print(f"wrote {out}")
    return {"calibration": calibration, "ece_before": before, "ece_after": after, "out": str(out)}


@hydra.main(config_path=CONF_DIR, config_name="calibrate", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    torch.manual_seed(0)
    calibrate(cfg)


if __name__ == "__main__":
    run_command(main, "calibrate", __doc__)
