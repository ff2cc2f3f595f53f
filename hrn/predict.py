"""``python -m hrn.predict ckpt_path=PATH images=[a.jpg,b.jpg] [threshold=0.0] [top_k=5]``: classify images along
the whole tree, one JSON line per image (:mod:`hrn.deploy.inference` says what each line holds).

``images`` is a list of files, a folder (its images, sorted) or a glob. Works from the checkpoint alone: tree,
names, network and test transform are stored in it.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, ListConfig

from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.deploy.inference import predict

__all__ = ["main", "predict"]


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    images = list(cfg.images) if isinstance(cfg.images, ListConfig) else cfg.images
    results = predict(
        cfg.ckpt_path, images, cfg.top_k, cfg.batch_size, cfg.device, cfg.trust_checkpoint, cfg.threshold
    )
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run_command(main, "predict", __doc__)
