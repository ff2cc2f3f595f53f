"""Lightning callbacks of the package."""

from __future__ import annotations

import json
import time

from lightning.pytorch.callbacks import Callback

from hrn.benchmarks.timing import sync

__all__ = ["EpochTimer"]


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
            f.write(json.dumps({"epoch": trainer.current_epoch, "seconds": self.seconds[-1]}) + "\n")
