"""``python -m hrn.export ckpt_path=PATH format=onnx|torchscript|safetensors [out=PATH] [probabilities=leaf|tree|mix|heads]``: a checkpoint as one
self-contained file that runs without this package (ONNX for onnxruntime, TorchScript for libtorch), or as a
weights-only folder to share (safetensors and config.json, :mod:`hrn.share`). What the files hold:
:mod:`hrn.deploy.formats`. Prints one JSON line: what was written, its size, the export time and the check."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from hrn.atomic import json_text
from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.deploy.formats import export

__all__ = ["export", "main"]


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    for name in ("onnx_ir", "onnxscript"):  # their graph passes log every step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    summary = export(
        cfg.ckpt_path,
        cfg.format,
        cfg.out,
        cfg.input,
        cfg.opset,
        cfg.check,
        cfg.trust_checkpoint,
        cfg.threshold,
        cfg.probabilities,
    )
    print(json_text(summary), flush=True)


if __name__ == "__main__":
    run_command(main, "export", __doc__)
