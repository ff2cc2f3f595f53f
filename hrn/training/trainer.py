"""Running Lightning's Trainer on an :class:`~hrn.training.HRNModule`: fit then test with the best checkpoint,
keeping the CSV rows of a run that resumes, and the progress-bar switch."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger

from hrn.data.base import DataSplits
from hrn.training.module import HRNModule

__all__ = ["fit_and_test", "fitting_callbacks", "keep_csv_logs", "load_settings", "seed_everything"]

# Lightning >= 2.6 takes weights_only; older Lightning has no such argument and loads with torch.load's default,
# so hrn.train checks a checkpoint with torch's safe unpickler (hrn.checkpoints.read_checkpoint) before it
# hands one over.
_TAKES_WEIGHTS_ONLY = "weights_only" in inspect.signature(L.Trainer.fit).parameters


def load_settings(trust: bool) -> dict:
    """What ``fit`` and ``test`` get for reading checkpoints: torch's safe unpickler, unless ``trust`` (a
    checkpoint of one's own from hrn before 0.2, ``trust_checkpoint=true``)."""
    return {"weights_only": not trust} if _TAKES_WEIGHTS_ONLY else {}


seed_everything = L.seed_everything  # Python, NumPy, torch and the loader workers


def fitting_callbacks(callbacks: list[Callback], progress_bar: bool | None, fast_dev_run) -> list[Callback]:
    """``callbacks`` less the progress bar when ``trainer.enable_progress_bar=false`` (Lightning refuses the two
    together, and the trainer's switch is the one a user reaches for), and less the checkpoints in a
    ``trainer.fast_dev_run`` smoke test (Lightning would still write a full-size last.ckpt)."""
    if progress_bar is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if fast_dev_run:
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
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
    trainer: L.Trainer, module: HRNModule, data: DataSplits, ckpt_path: str | None = None, trust: bool = False
) -> tuple[dict[str, float], str]:
    """Train on ``data``'s train split (validating on its val split), resuming from ``ckpt_path`` when given, then
    test the best checkpoint (the last weights without one). Returns the flat test metrics and the best
    checkpoint's path ("" when none was kept). Checkpoints are read with torch's safe unpickler, but the one to
    resume from with ``trust``."""
    if ckpt_path is not None:
        keep_csv_logs(trainer.loggers)
    trainer.fit(module, data.loader("train"), data.loader("val"), ckpt_path=ckpt_path, **load_settings(trust))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    # verbose=False: the command prints its own table of the results; Lightning's would repeat them on stdout
    results = trainer.test(
        module, data.loader("test"), ckpt_path=best or None, verbose=False, **load_settings(False)
    )
    return {k: float(v) for k, v in results[0].items()}, best
