"""``python -m hrn.calibrate ckpt_path=PATH [labels=FILE] [out=PATH] [per_level=true]``: fit temperatures for the
tree scores (one per level, or one) and the leaf softmax on held-out images (the validation split, or the
``path,label`` CSV ``labels=``; never an image the model trained on) by negative log-likelihood, write them into a
new checkpoint, and print per level the expected calibration error on the held-out and the test images and the
test marginal accuracy, before and after (:mod:`hrn.calibration`). Predict, evaluate, export and Grad-CAM use the temperatures of a calibrated model."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from hrn.calibration import check_held_out, collect_outputs, fit_temperatures, level_report, save_calibrated
from hrn.checkpoints import load_checkpoint
from hrn.cli.build import checkpoint_data
from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.data.base import DataError, DataSplits, LabelledImages
from hrn.data.files import DecodedFiles, check_images
from hrn.data.folder import read_labels
from hrn.deploy.inference import pick_device

__all__ = ["calibrate", "default_out", "held_out", "main"]


def default_out(source: str | Path) -> Path:
    """``<name>-calibrated.ckpt`` beside a checkpoint, ``<name>-calibrated/`` beside a shared folder."""
    source = Path(source)
    if source.is_dir():
        return source.with_name(f"{source.name}-calibrated")
    return source.with_name(f"{source.stem}-calibrated{source.suffix}")


LEGACY_SPLIT_KEYS = ("_target_", "val_fraction", "split_seed")  # change the training split of a dataset


def held_out(cfg: DictConfig, model, data: DataSplits) -> tuple[LabelledImages, str]:
    """The images to fit on, and what to call them: ``labels=FILE`` (a ``path,label`` CSV, paths relative to it),
    else the dataset's validation split; checked by :func:`hrn.calibration.check_held_out`."""
    recorded = model.description.data.get("protocol", {}).get("train_images_sha256")
    overridden = [k for k in LEGACY_SPLIT_KEYS if cfg.dataset.get(k) is not None]
    if recorded is None and overridden:
        raise DataError(
            f"dataset.{overridden[0]}: this checkpoint does not record which images it trained on (written before hrn recorded them), "
            "so only the split it was trained with can be trusted to be held out; calibrate without the override"
        )
    if cfg.labels:
        path = Path(str(cfg.labels)).expanduser()
        rows, _ = read_labels(path, model.hierarchy)
        samples, _ = check_images([sample for sample, _ in rows], "error", str(path))
        paths = [s.path for s in samples]
        images = LabelledImages(
            DecodedFiles(paths, data.augment.resize), [s.target for s in samples], [str(p) for p in paths],
            data.augment,
        )  # fmt: skip
        what = f"labels={path}"
    elif data.val is data.test:
        raise DataError(
            f"the {data.name} dataset validates on its test split (it was trained with dataset.val_fraction=0, so "
            "every other image was trained on): give images the model never saw with labels=FILE (a CSV "
            "'path,label', paths relative to it)"
        )
    else:
        images, what = data.val, f"the {data.name} val split"
    check_held_out(data.train.paths, images.paths, recorded, model.hierarchy, what)
    return images, what


def calibrate(cfg: DictConfig) -> dict:
    """Calibrate ``cfg.ckpt_path``; returns the calibration record, the per-level ECE and marginal accuracy on the
    held-out and the test images before and after, and the file written."""
    trust = bool(cfg.get("trust_checkpoint", False))
    model = load_checkpoint(cfg.ckpt_path, trust)
    data = checkpoint_data(cfg, model)
    images, what = held_out(cfg, model, data)
    data.val = images
    device = pick_device(str(cfg.device))
    h, source = model.hierarchy, model.tree_scores
    fitted_on = collect_outputs(model.net, data.loader("val"), source, device)
    calibration = fit_temperatures(fitted_on, h, source, cfg.per_level)
    calibration["split"] = "val" if not cfg.labels else f"labels={cfg.labels}"
    calibration["held_out_images"] = len(images)
    test = collect_outputs(model.net, data.loader("test"), source, device)
    report = {
        f"{split}_{when}": level_report(outputs, h, source, record)
        for split, outputs in (("held_out", fitted_on), ("test", test))
        for when, record in (("before", model.calibration), ("after", calibration))
    }
    out = save_calibrated(cfg.ckpt_path, calibration, cfg.out or default_out(cfg.ckpt_path), trust)
    print(f"fitted on {what} ({len(images)} images); ECE of the marginals (15 bins) and marginal accuracy:")
    print(f"{'level':<6}{'classes':>8}{'held-out ECE':>18}{'test ECE':>18}{'test accuracy':>18}")
    for lvl, n in enumerate(h.level_sizes):
        cells = [
            f"{report[f'{split}_before'][key][lvl]:.4f} -> {report[f'{split}_after'][key][lvl]:.4f}"
            for split, key in (("held_out", "ece"), ("test", "ece"), ("test", "accuracy"))
        ]
        print(f"{lvl + 1:<6}{n:>8}" + "".join(f"{c:>18}" for c in cells))
    if calibration["tree_temperature"] is not None:
        print(
            "tree temperatures per level: " + ", ".join(f"{t:.4g}" for t in calibration["tree_temperature"])
        )
    print(f"leaf temperature: {calibration['leaf_temperature']:.4g}")
    for name, nll in calibration["nll"].items():
        print(f"{name} NLL on the held-out images: {nll['before']:.4f} -> {nll['after']:.4f}")
    print(f"wrote {out}")
    return {
        "calibration": calibration,
        "ece_before": report["test_before"]["ece"],
        "ece_after": report["test_after"]["ece"],
        **report,
        "out": str(out),
    }


@hydra.main(config_path=CONF_DIR, config_name="calibrate", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    torch.manual_seed(0)
    calibrate(cfg)


if __name__ == "__main__":
    run_command(main, "calibrate", __doc__)
