"""``python -m hrn.evaluate ckpt_path=PATH [split=val] [dataset overrides]``: the paper's table from a checkpoint,
with ``metrics.json``, ``predictions.npz``, ``per_class.csv`` and a confusion matrix per level in the run directory
(:mod:`hrn.cli.evaluation`)."""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.cli.evaluation import evaluate

__all__ = ["evaluate", "main"]


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    evaluate(cfg)


if __name__ == "__main__":
    run_command(main, "evaluate", __doc__)
