"""Trained models from checkpoints: ``hrn.load_checkpoint(path)`` gives the plain network, its tree, where its node
probabilities come from, its test transform and its self-description, from the file alone (or from a shared folder,
:mod:`hrn.share`).

A checkpoint written by ``hrn.train`` holds the LightningModule's ``state_dict`` and, under :data:`CHECKPOINT_KEY`,
the model's description (:class:`hrn.description.ModelDescription`: the tree with its names, the network's class
and settings, the loss, the dataset config, the transform sizes). Neither Hydra nor Lightning is needed to read
it; the file is read with torch's safe unpickler, and a network or loss is built only when it names one of the
package's own classes (:mod:`hrn.trained`): a checkpoint is input from strangers, and opening one runs no code.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from hrn.description import CHECKPOINT_KEY, CheckpointError, ModelDescription
from hrn.share import load_folder
from hrn.trained import LOSSES, NETWORKS, LoadedModel, build_loss, build_network, describe_network, model_from

__all__ = [
    "CHECKPOINT_KEY",
    "LOSSES",
    "NETWORKS",
    "CheckpointError",
    "LoadedModel",
    "ModelDescription",
    "build_loss",
    "build_network",
    "describe_network",
    "load_checkpoint",
    "model_from",
    "read_checkpoint",
]

TRUST_HINT = (
    "a checkpoint you wrote yourself with hrn before 0.2 loads with trust_checkpoint=true (unsafe for files from "
    "others: it lets the file run code)"
)


_ZIP = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
_PICKLE = (
    b"\x80"  # the legacy format: a pickle (protocol 2 or more) after torch's magic number, also a pickle
)


def _looks_like_torch_file(path: Path) -> bool:
    """Whether the file starts as torch.save's files do (a zip archive, or a pickle): a text file or random bytes
    do not, and are no checkpoint whatever the unpickler would say of them."""
    with path.open("rb") as f:
        head = f.read(4)
    return head.startswith(_ZIP) or head.startswith(_PICKLE)


def read_checkpoint(path: str | Path, trust: bool = False) -> dict:
    """Read an HRN checkpoint (a dict with ``state_dict`` and the :data:`CHECKPOINT_KEY` self-description) with
    torch's safe unpickler (``weights_only=True``), which builds tensors and plain containers and calls nothing
    else; or raise one line: missing, not a PyTorch file, unreadable (truncated), foreign, or holding anything
    that would run code (refused, with the global it names).

    ``trust=True`` (``trust_checkpoint=true``) loads with the full unpickler instead: for checkpoints written by
    hrn before 0.2 (their random-generator states are NumPy arrays), and only for files of one's own.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: checkpoint not found")
    not_torch = CheckpointError(
        f"ckpt_path={path}: not a PyTorch checkpoint (a file written by torch.save, as hrn.train writes them)"
    )
    try:
        if not _looks_like_torch_file(path):
            raise not_torch
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if trust or "Weights only load failed" not in str(e) or not found:
            raise CheckpointError(
                f"ckpt_path={path}: cannot read the checkpoint ({type(e).__name__}); the file is truncated or not a "
                "PyTorch checkpoint"
            ) from None
        raise CheckpointError(
            f"ckpt_path={path}: refused: loading it would call {found.group(1)}, and hrn loads checkpoints with "
            f"torch's safe unpickler, which runs no code; {TRUST_HINT}"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(
            f"ckpt_path={path}: cannot read the checkpoint ({type(e).__name__}); the file is truncated or not a "
            "PyTorch checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"ckpt_path={path}: not an HRN checkpoint (no '{CHECKPOINT_KEY}' entry); use one written by hrn.train"
        )
    return ckpt


def load_checkpoint(path: str | Path, trust: bool = False) -> LoadedModel:
    """The trained network of an ``hrn.train`` checkpoint, or of a shared folder (``model.safetensors`` and
    ``config.json``, :mod:`hrn.share`), rebuilt from the file alone (see :class:`~hrn.trained.LoadedModel`).

    A checkpoint is read with torch's safe unpickler (:func:`read_checkpoint`; ``trust`` as there). A missing,
    truncated or foreign file, one that would run code, a malformed description, a network or loss the package
    does not have, or weights that do not fit the network the file describes: one line (:class:`CheckpointError`).
    """
    path = Path(path)
    if path.is_dir():
        return load_folder(path)
    ckpt = read_checkpoint(path, trust)
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return model_from(ckpt[CHECKPOINT_KEY], state, path)
