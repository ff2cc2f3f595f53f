"""Training on PyTorch Lightning: the LightningModule (:mod:`~hrn.training.module`), what the checkpoints get
from us (:mod:`~hrn.training.checkpointing`), running the Trainer (:mod:`~hrn.training.trainer`) and callbacks.
The only part of the package that imports Lightning."""

import logging

from hrn.training.checkpointing import AtomicCheckpointIO
from hrn.training.module import HRNModule, NonFiniteError, ResumeError, StaticCompiled

__all__ = ["AtomicCheckpointIO", "HRNModule", "NonFiniteError", "ResumeError", "StaticCompiled"]


def _log_through_root() -> None:
    """Lightning's log lines once: ``import lightning`` gives its loggers console handlers of their own, which print
    every line a second time beside the root logger's handlers when logging is already configured (a command's:
    stderr and the run's log file). Where it is not (a notebook), Lightning keeps its own."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True


_log_through_root()
