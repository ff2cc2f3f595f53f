"""Lightning callbacks of the package."""

from __future__ import annotations

import contextlib
import sys
import time

from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from hrn.atomic import json_text
from hrn.benchmarks.timing import sync

__all__ = ["EpochTimer", "StderrProgressBar"]


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bar on stderr, where the logs go: stdout carries only a command's results (its table,
    its JSON), so ``python -m hrn.train ... > results.txt`` and pipes read just those. Lightning's bars write to
    whatever ``sys.stdout`` is when they are made."""

    def _on_stderr(self, make):
        with contextlib.redirect_stdout(sys.stderr):
            return make()

    def init_sanity_tqdm(self):
        return self._on_stderr(super().init_sanity_tqdm)

    def init_train_tqdm(self):
        return self._on_stderr(super().init_train_tqdm)

    def init_predict_tqdm(self):
        return self._on_stderr(super().init_predict_tqdm)

    def init_validation_tqdm(self):
        return self._on_stderr(super().init_validation_tqdm)

    def init_test_tqdm(self):
        return self._on_stderr(super().init_test_tqdm)


class EpochTimer(Callback):
    """Records the wall time of every epoch, training and validation together (Lightning callback hooks, used by
    ``python -m hrn.bench --e2e`` through ``callbacks``). Seconds go to ``self.seconds`` and, one JSON line each, to ``out``."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        sync(module.device)
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking or not hasattr(self, "_start"):
            return
        sync(module.device)
        self.seconds.append(time.perf_counter() - self._start)
        with open(self.out, "a") as f:
            f.write(json_text({"epoch": trainer.current_epoch, "seconds": self.seconds[-1]}) + "\n")
