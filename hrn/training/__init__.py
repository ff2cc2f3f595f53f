"""Training on PyTorch Lightning: the LightningModule (:mod:`~hrn.training.module`), what the checkpoints get
from us (:mod:`~hrn.training.checkpointing`), running the Trainer (:mod:`~hrn.training.trainer`) and callbacks.
The only part of the package that imports Lightning."""

from hrn.training.checkpointing import AtomicCheckpointIO
from hrn.training.module import HRNModule, NonFiniteError, ResumeError, StaticCompiled

__all__ = ["AtomicCheckpointIO", "HRNModule", "NonFiniteError", "ResumeError", "StaticCompiled"]
