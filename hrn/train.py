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
from hrn.description import CHECKPOINT_KEY, CheckpointError, ModelDescription
from hrn.metrics import level_table

__all__ = ["check_resume", "main", "resume_file", "train"]


def resume_file(resume: str | None, trainer) -> Path | None:
    """The checkpoint ``ckpt_path`` names: the file, or for ``last`` the newest ``last*.ckpt`` of the run's
    checkpoint folder; one line when there is none (a resume that silently started afresh would look like one)."""
    if resume is None:
        return None
    if resume != "last":
        return Path(resume)
    callback = trainer.checkpoint_callback
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
    found = (
        sorted(folder.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if folder and folder.is_dir()
        else []
    )
    if not found:
        raise CheckpointError(
            f"ckpt_path=last: no last*.ckpt in {folder or 'the run (it keeps no checkpoints)'}; resume a run with "
            "hydra.run.dir=<its folder> ckpt_path=last, or give ckpt_path=<file>"
        )
    return found[-1]


def check_resume(path: Path, trust: bool, data) -> None:
    """Before training: one clear line for a missing, truncated or foreign file, one that would run code, or one
    trained on another tree than this run's."""
    saved = read_checkpoint(path, trust)[CHECKPOINT_KEY]
    tree = ModelDescription.from_dict(saved, f"ckpt_path={path}").tree
    if tree != data.hierarchy:
        raise CheckpointError(
            f"ckpt_path={path}: trained on another tree (levels {tree.level_sizes}) than this run's dataset "
            f"{data.name} (levels {data.hierarchy.level_sizes}); resume with the dataset the run started with"
        )


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
    trust = bool(cfg.get("trust_checkpoint", False))
    resume = resume_file(cfg.get("ckpt_path"), trainer)
    if resume is not None:
        check_resume(resume, trust, data)
    # the file checked is the file Lightning loads (not "last" for it to resolve again)
    metrics, best = fit_and_test(trainer, module, data, str(resume) if resume else None, trust)
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
