"""What every trunk family shares below its builder: :class:`ModelError` and the reader of weights files.

Both trunk builders (torchvision's ResNets in :mod:`hrn.nets.trunks`, timm models in :mod:`hrn.nets.timm_trunk`)
start from a weights file the same way, and both say what is wrong in the same one-line error; this module is
what they import, so neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hrn.errors import HRNError

__all__ = ["ModelError", "first_line", "read_state_dict"]


class ModelError(HRNError):
    """A model setting the package cannot use; one line that says how to fix it."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none: what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_state_dict(path: str | Path, what: str) -> dict:
    """The state dict in a weights file (``model.weights``): a ``.safetensors`` file, or a torch file read with the
    safe unpickler (a ``{"state_dict": ...}`` wrapper unwrapped); one line naming the file and ``what`` it should
    hold otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model.weights={path}: file not found (expected {what})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a usable state dict"
        raise ModelError(f"model.weights={path}: not {what} ({first_line(e)[:200]})") from None
    return (
        state["state_dict"]
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict)
        else state
    )
