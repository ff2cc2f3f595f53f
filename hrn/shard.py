"""``python -m hrn.shard dataset=<any dataset config> out=DIR [num_workers=1] [chunk_bytes=64MB]``: write a dataset's
train, val and test splits as LitData shards under ``DIR`` (:mod:`hrn.data.shards`: the images after the dataset's
decode and resize, the labels before any relabelling, ``DIR/hrn.json`` last), for ``litdata.StreamingDataset`` to
stream from a local disk, a shared file system or object storage. Re-running on a complete ``DIR`` written from the
same settings does nothing. Needs the ``scale`` extra (``pip install 'hrn[scale]'``)."""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hrn.atomic import json_text
from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.data.base import DataError
from hrn.data.shards import read_manifest, write_shards

__all__ = ["main"]

log = logging.getLogger(__name__)


@hydra.main(config_path=CONF_DIR, config_name="shard", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    try:
        import litdata  # noqa: F401  (the extra: checked before any work)
    except ImportError:
        raise DataError("hrn.shard needs the package litdata: pip install 'hrn[scale]'") from None
    if read_manifest(cfg.out) is None:
        log.info("writing the shards of dataset %s into %s", cfg.dataset.get("_target_"), cfg.out)
    source = OmegaConf.to_container(cfg.dataset, resolve=True)
    data = instantiate(cfg.dataset)
    manifest = write_shards(
        data, cfg.out, source, chunk_bytes=str(cfg.chunk_bytes), num_workers=int(cfg.num_workers)
    )
    levels = [len(names) for names in manifest["tree"]["levels"]]
    print(json_text({"out": str(cfg.out), "splits": manifest["splits"], "levels": levels}))


if __name__ == "__main__":
    run_command(main, "shard", __doc__)
