"""``python -m hrn.inspect [same overrides as hrn.train]``: what training would see, as one JSON line.

Loads the dataset and applies the protocols exactly as ``hrn.train`` does (checking every image on the way), then
prints the tree's level sizes, each split's size and how many samples carry a label at each level, and how many
training images were relabelled and degraded (:meth:`hrn.data.base.DataSplits.summary`). Trains nothing.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hrn.atomic import json_text
from hrn.cli.build import build_data
from hrn.cli.config import CONF_DIR, apply_ratio_settings
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors

__all__ = ["main"]


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    print(json_text(build_data(apply_ratio_settings(cfg)).summary()))


if __name__ == "__main__":
    # inspect writes nothing: no run folder, no .hydra/, no log file (its one JSON line on stdout, logs on stderr)
    run_command(
        main,
        "inspect",
        __doc__,
        config="train",
        extra=["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=stderr"],
    )
