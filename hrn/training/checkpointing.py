"""What Lightning's checkpoints get from us: atomic writes, and the random-generator states a resumed run needs to
repeat an unbroken one, stored as types torch's safe unpickler reads (``weights_only=True``)."""

from __future__ import annotations

import io
import random

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hrn.atomic import atomic_write_bytes

__all__ = ["AtomicCheckpointIO", "rng_states", "set_rng_states"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place, so a kill during a save never
    leaves a truncated checkpoint where ``ckpt_path=last`` would find it."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def rng_states() -> dict:
    """The Python, NumPy, torch (and CUDA) random-generator states, to save in a checkpoint, as types torch's safe
    unpickler reads: NumPy's key array as a tensor, the rest tuples of numbers and strings."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` saved (or what hrn before 0.2 saved: NumPy's state with an array)."""
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    keys = keys.numpy().astype(np.uint32) if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((name, keys, *rest))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
