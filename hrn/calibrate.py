"""``python -m hrn.calibrate ckpt_path=PATH [out=PATH] [per_level=true]``: fit temperatures for the tree scores (one
per level, or one) and the leaf softmax on the validation split by negative log-likelihood, write them into a new
checkpoint, and print the per-level expected calibration error on the test split before and after
(:mod:`hrn.calibration`). Predict, evaluate, export and Grad-CAM use the temperatures of a calibrated model."""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from hrn.cli.calibration import calibrate
from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors

__all__ = ["calibrate", "main"]


@hydra.main(config_path=CONF_DIR, config_name="calibrate", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    torch.manual_seed(0)
    calibrate(cfg)


if __name__ == "__main__":
    run_command(main, "calibrate", __doc__)
