"""``python -m hrn.train [overrides]``: train, test with the best checkpoint, print a per-level table and write
``metrics.json`` in the run directory (beside ``checkpoints/`` and the CSV logs ``csv/``).

``train(cfg)`` is the run itself, for notebooks and sweeps that compose a config of their own.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from hrn.atomic import write_json
from hrn.checkpoints import read_checkpoint
from hrn.cli.build import apply_matmul_precision, build_data, build_loggers, build_module, build_trainer
from hrn.cli.config import CONF_DIR, apply_ratio_settings
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.metrics import level_table

__all__ = ["main", "resume_files", "train"]


def resume_files(resume: str | None, trainer) -> list[Path]:
    """The checkpoint ``ckpt_path`` names: the file, or for ``last`` the newest ``last*.ckpt`` of the run's
    checkpoint folder (none when there is none yet: Lightning then starts afresh)."""
    if resume is None:
        return []
    if resume != "last":
        return [Path(resume)]
    callback = trainer.checkpoint_callback
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
    found = (
        sorted(folder.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if folder and folder.is_dir()
        else []
    )
    return found[-1:]


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one run described by ``cfg``; returns the flat test metrics (also in ``metrics.json``)."""
    from hrn.training.trainer import fit_and_test, seed_everything  # Lightning, once a run starts

    cfg = apply_ratio_settings(cfg)
    apply_matmul_precision(cfg)
    loggers = build_loggers(cfg)  # first: a missing logger library stops the run before any work
    seed_everything(cfg.seed, workers=True)
    data = build_data(cfg)
    module = build_module(cfg, data)
    trainer = build_trainer(cfg, loggers)
    resume = cfg.get("ckpt_path")
    trust = bool(cfg.get("trust_checkpoint", False))
    for path in resume_files(resume, trainer):
        # before training: one clear line for a missing, truncated or foreign file, or one that would run code
        read_checkpoint(path, trust)
    metrics, best = fit_and_test(trainer, module, data, resume, trust)
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
    run_command(main, "train", __doc__)
