"""``python -m hrn.gradcam ckpt_path=PATH images=[a.jpg,b.jpg] [out=cams.png] [target=predicted|NODE]
[layer=gsb|trunk] [probabilities=leaf|tree|mix|heads]``: one PNG grid, a row per image, the input then one Grad-CAM heatmap per level, each titled with
its node and that node's probability (the leaf softmax summed up the tree by default, as ``hrn.predict``) (:mod:`hrn.explain.cams`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, ListConfig

from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.explain.cams import gradcam

__all__ = ["gradcam", "main"]


@hydra.main(config_path=CONF_DIR, config_name="gradcam", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    images = list(cfg.images) if isinstance(cfg.images, ListConfig) else cfg.images
    gradcam(
        cfg.ckpt_path,
        images,
        out=cfg.out,
        target=str(cfg.target),
        layer=str(cfg.layer),
        scale=float(cfg.scale),
        batch_size=int(cfg.batch_size),
        device=str(cfg.device),
        trust=bool(cfg.trust_checkpoint),
        probabilities=str(cfg.probabilities),
    )


if __name__ == "__main__":
    run_command(main, "gradcam", __doc__)
