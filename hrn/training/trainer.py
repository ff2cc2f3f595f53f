"""Running Lightning's Trainer on an :class:`~hrn.training.HRNModule`: fit then test with the best checkpoint,
keeping the CSV rows of a run that resumes, and the progress-bar switch."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers import CSVLogger

from hrn.data.base import DataSplits
from hrn.training.module import HRNModule

__all__ = ["FULL_LOAD", "fit_and_test", "keep_csv_logs", "seed_everything", "without_progress_bar"]

# Our checkpoints also hold the random-generator states and the run description, which torch's weights_only=True
# (its default from torch 2.6) refuses. Lightning >= 2.6 follows that default unless told otherwise; older
# Lightning always loads everything and has no such argument.
FULL_LOAD = {"weights_only": False} if "weights_only" in inspect.signature(L.Trainer.fit).parameters else {}

seed_everything = L.seed_everything  # Python, NumPy, torch and the loader workers


def without_progress_bar(callbacks: list[Callback], enabled: bool | None) -> list[Callback]:
    """``callbacks`` less the progress bar when ``trainer.enable_progress_bar=false``: Lightning refuses the two
    together, and the trainer's switch is the one a user reaches for."""
    if enabled is False:
        return [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def keep_csv_logs(loggers: list) -> None:
    """Lightning's CSV logger starts its metrics.csv afresh; when a run resumes, keep the rows logged before the
    crash under another name instead of losing them."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            old = Path(logger.log_dir) / "metrics.csv"
            if old.is_file():
                old.rename(old.with_name(f"metrics-before-resume-{time.strftime('%Y%m%d-%H%M%S')}.csv"))


def fit_and_test(
    trainer: L.Trainer, module: HRNModule, data: DataSplits, ckpt_path: str | None = None
) -> tuple[dict[str, float], str]:
    """Train on ``data``'s train split (validating on its val split), resuming from ``ckpt_path`` when given, then
    test the best checkpoint (the last weights without one). Returns the flat test metrics and the best
    checkpoint's path ("" when none was kept)."""
    if ckpt_path is not None:
        keep_csv_logs(trainer.loggers)
    trainer.fit(module, data.loader("train"), data.loader("val"), ckpt_path=ckpt_path, **FULL_LOAD)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(module, data.loader("test"), ckpt_path=best or None, **FULL_LOAD)
    return {k: float(v) for k, v in results[0].items()}, best
