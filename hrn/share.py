"""The weights-only share format: a folder with ``model.safetensors`` (the network's weights) and ``config.json``
(the tree with its names, the network and loss settings, the test transform, where the node probabilities come
from, the dataset settings less the machine's paths, the package version).

It is the layout the Hugging Face hub expects of a model repository, so the folder can be uploaded as it is; nothing
here talks to a hub. Reading it runs no code: safetensors holds tensors only, config.json is JSON, and the network
is one of the package's own classes (:data:`hrn.checkpoints.NETWORKS`). ``python -m hrn.export format=safetensors``
writes one; ``hrn.load_checkpoint`` and every command that takes ``ckpt_path`` read one.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from hrn.atomic import atomic_write_bytes, json_text
from hrn.data.augment import MEAN, STD
from hrn.description import CheckpointError, ModelDescription
from hrn.trained import LoadedModel, model_from

__all__ = [
    "CONFIG",
    "MACHINE_KEYS",
    "WEIGHTS",
    "config_bytes",
    "folder_files",
    "load_folder",
    "share_config",
    "write_folder",
]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MODEL_TYPE = "hrn"  # config.json's model_type, as the hub reads it
MACHINE_KEYS = ("root", "cache_dir")
"""Dataset settings that name folders of the machine that trained the model: left out of a shared config (pass
``dataset.root=...`` to evaluate a shared model on your copy of the data)."""


def share_config(description: ModelDescription) -> dict:
    """``config.json`` of a trained model: its description (:meth:`ModelDescription.to_dict`, the dataset settings
    less the machine's folders) and what a user of the folder needs to prepare inputs (``transform``), in plain
    JSON."""
    d = description.to_dict()
    d["dataset"] = {k: v for k, v in (description.dataset or {}).items() if k not in MACHINE_KEYS}
    d["data"] = {k: v for k, v in description.data.items() if k in ("name", "resize", "crop", "padding")}
    resize, crop = description.resize, description.crop
    return {
        "model_type": MODEL_TYPE,
        "architectures": [str(description.net.get("_target_", "")).rsplit(".", 1)[-1]],
        **d,
        "transform": {
            "resize": [resize, resize],
            "crop": crop,
            "mean": [MEAN] * 3,
            "std": [STD] * 3,
            "steps": f"Resize(({resize}, {resize}), bilinear, antialias) -> CenterCrop({crop}) -> "
            "float32 / 255 -> (x - mean) / std",
        },
    }


def config_bytes(description: ModelDescription) -> bytes:
    """:func:`share_config` as the bytes of ``config.json``."""
    return (json_text(share_config(description), indent=2, sort_keys=True) + "\n").encode("utf-8")


def folder_files(model: LoadedModel) -> dict[str, bytes]:
    """The folder's two files, as bytes: ``config.json`` and ``model.safetensors`` (the plain network's state
    dict, tensors made contiguous, the hub's ``{"format": "pt"}`` metadata)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.net.state_dict().items()}
    return {
        CONFIG: config_bytes(model.description),
        WEIGHTS: save_safetensors(state, metadata={"format": "pt"}),
    }


def write_folder(files: dict[str, bytes], out: Path) -> None:
    """Write the files into the folder ``out`` (created if needed), each atomically; other files there stay."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(
            f"out={out}: is a file; format=safetensors writes a folder (e.g. out={out.with_suffix('')})"
        )
    for name, payload in files.items():
        atomic_write_bytes(out / name, payload)


def model_from_files(files: dict[str, bytes], where: Path) -> LoadedModel:
    """The :class:`LoadedModel` of a shared folder's two files (as bytes)."""
    try:
        config = json.loads(files[CONFIG].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"ckpt_path={where}: {CONFIG} is not JSON ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(
            f"ckpt_path={where}: {CONFIG} does not describe an hrn model (model_type {MODEL_TYPE!r})"
        )
    try:
        state = load_safetensors(files[WEIGHTS])
    except Exception as e:  # noqa: BLE001 - safetensors raises its own errors for a bad file
        raise CheckpointError(
            f"ckpt_path={where}: {WEIGHTS} is not a safetensors file ({type(e).__name__})"
        ) from None
    return model_from(config, state, where)


def load_folder(path: str | Path) -> LoadedModel:
    """The trained model in a shared folder (``ckpt_path=DIR``); one line for a folder that is not one."""
    path = Path(path)
    missing = [name for name in (CONFIG, WEIGHTS) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"ckpt_path={path}: a folder without {' or '.join(missing)}; give a checkpoint file, or a folder written "
            "by python -m hrn.export format=safetensors"
        )
    return model_from_files({name: (path / name).read_bytes() for name in (CONFIG, WEIGHTS)}, path)
