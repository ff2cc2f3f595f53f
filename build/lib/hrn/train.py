"""``python -m hrn.train [overrides]``: train, test with the best checkpoint, print a per-level table and write
``metrics.json`` in the run directory (beside ``checkpoints/`` and the CSV logs ``csv/``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from hrn.app import CONF_DIR, apply_ratio_settings, build_data, build_module, read_checkpoint, report_errors
from hrn.io import write_json
from hrn.lit import AtomicCheckpointIO

log = logging.getLogger(__name__)


def level_table(metrics: dict[str, float], level_sizes: list[int], stage: str = "test") -> str:
    """A plain-text table of per-level accuracy, coarse -> fine."""
    rows = [f"{'level':<8}{'classes':>8}{'accuracy':>10}"]
    for lvl, n in enumerate(level_sizes, start=1):
        rows.append(f"{lvl:<8}{n:>8}{metrics.get(f'{stage}/acc_l{lvl}', float('nan')):>10.4f}")
    if f"{stage}/acc_leaf_sigmoid" in metrics:
        rows.append(f"{'leaf (sigmoid head)':<16}{metrics[f'{stage}/acc_leaf_sigmoid']:>10.4f}")
    return "\n".join(rows)


def keep_csv_logs(loggers: list) -> None:
    """Lightning's CSV logger starts its metrics.csv afresh; when a run resumes, keep the rows logged before the
    crash under another name instead of losing them."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            old = Path(logger.log_dir) / "metrics.csv"
            if old.is_file():
                old.rename(old.with_name(f"metrics-before-resume-{time.strftime('%Y%m%d-%H%M%S')}.csv"))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one run described by ``cfg``; returns the flat test metrics (also in ``metrics.json``)."""
    cfg = apply_ratio_settings(cfg)
    L.seed_everything(cfg.seed, workers=True)
    data = build_data(cfg)
    module = build_module(cfg, data)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )

    resume = cfg.get("ckpt_path")
    if resume not in (None, "last"):
        read_checkpoint(resume)  # one clear line for a missing, truncated or foreign file, before training
    if resume is not None:
        keep_csv_logs(loggers)
    # weights_only=False: our checkpoints also hold the random-generator states and the run description
    trainer.fit(module, data.loader("train"), data.loader("val"), ckpt_path=resume, weights_only=False)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(module, data.loader("test"), ckpt_path=best or None, weights_only=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    if trainer.is_global_zero:  # every process holds the same (gathered) metrics; one writes them
        write_json(Path(cfg.run_dir) / "metrics.json", metrics)
        print(level_table(metrics, data.hierarchy.level_sizes))
        print(
            f"metrics: {Path(cfg.run_dir) / 'metrics.json'}" + (f"  best checkpoint: {best}" if best else "")
        )
    return metrics


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
