"""``python -m hrn.predict ckpt_path=PATH images=[a.jpg,b.jpg] [threshold=0.0] [probabilities=leaf|tree|mix|heads] [top_k=5] [on_bad_image=error|skip]``: classify images along
the whole tree, one JSON line per image (:mod:`hrn.deploy.inference` says what each line holds).

``images`` is a list of files, a folder (its images, sorted) or a glob. Works from the checkpoint alone: tree,
names, network and test transform are stored in it.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, ListConfig

from hrn.atomic import json_text
from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.deploy.inference import predict

__all__ = ["main", "predict"]


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    images = list(cfg.images) if isinstance(cfg.images, ListConfig) else cfg.images
    skipped: list = []
    results = predict(
        cfg.ckpt_path,
        images,
        cfg.top_k,
        cfg.batch_size,
        cfg.device,
        cfg.trust_checkpoint,
        cfg.threshold,
        cfg.on_bad_image,
        skipped,
        cfg.probabilities,
    )
    for result in results:
        print(json_text(result), flush=True)
    if skipped:  # the files left out, once more at the end, where a user looks
        print(
            f"hrn: skipped {len(skipped)} image(s) that do not decode: {', '.join(map(str, skipped))}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    run_command(main, "predict", __doc__)
