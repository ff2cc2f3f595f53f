"""``python -m hrn.export ckpt_path=PATH format=onnx|torchscript [out=PATH] [input=float32|uint8]``: a checkpoint as
one self-contained file that runs without this package (onnxruntime, or libtorch / ``torch.jit.load``); what the
file holds: :mod:`hrn.deploy.formats`. Prints one JSON line: the file, its size, the export time and the check."""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig

from hrn.cli.config import CONF_DIR
from hrn.cli.errors import report_errors
from hrn.deploy.formats import export

__all__ = ["export", "main"]


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    for name in ("onnx_ir", "onnxscript"):  # their graph passes log every step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    summary = export(cfg.ckpt_path, cfg.format, cfg.out, cfg.input, cfg.opset, cfg.check)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
