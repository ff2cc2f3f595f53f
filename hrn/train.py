"""``python -m hrn.train [overrides]``: train, test with the best checkpoint, print a per-level table and write
``metrics.json`` in the run directory (beside ``checkpoints/`` and the CSV logs ``csv/``)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.cli.training import train

__all__ = ["main", "train"]


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    run_command(main, "train", __doc__)
