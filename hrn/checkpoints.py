"""Trained models from checkpoints: ``hrn.load_checkpoint(path)`` gives the plain network, its tree, where its node
probabilities come from, its test transform and the checkpoint's self-description, from the file alone (or from a
shared folder, :mod:`hrn.share`).

A checkpoint written by ``hrn.train`` holds the LightningModule's ``state_dict`` and, under :data:`CHECKPOINT_KEY`,
plain data that describes the run: the tree (names and parents), the network's class and settings, the loss, the
dataset config and the transform sizes. Neither Hydra nor Lightning is needed to read it, and a network or loss is
built only when the file names one of the package's own classes (:data:`NETWORKS`, :data:`LOSSES`), and the file is
read with torch's safe unpickler: a checkpoint is input from strangers, and opening one runs no code.
"""

from __future__ import annotations

import inspect
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hrn import losses, nets
from hrn.data.augment import eval_transform
from hrn.errors import HRNError
from hrn.losses import HierarchicalLoss
from hrn.nets.trunks import TRUNK_OPTIONS
from hrn.tree import Hierarchy, TreeProbabilities, check_tree_scores

__all__ = [
    "CHECKPOINT_KEY",
    "LOSSES",
    "NETWORKS",
    "CheckpointError",
    "LoadedModel",
    "build_loss",
    "build_network",
    "describe_network",
    "load_checkpoint",
    "model_from",
    "read_checkpoint",
]

CHECKPOINT_KEY = "hrn"  # the checkpoint's self-description lives under this key

NETWORKS: dict[str, type[nn.Module]] = {
    **{
        f"hrn.nets.{cls.__name__}": cls
        for cls in (nets.HRN, nets.CHMCNN, nets.HMCNF, nets.ChangNet, nets.HMCLMLP)
    },
    # where checkpoints written before the package's layout of 0.2 name them
    "hrn.model.HRN": nets.HRN,
    **{f"hrn.baselines.{c.__name__}": c for c in (nets.CHMCNN, nets.HMCNF, nets.ChangNet, nets.HMCLMLP)},
}
"""The networks a checkpoint may name, by the path its description gives (``net._target_``)."""

_LOSS_CLASSES = (
    losses.CompositeLoss,
    losses.LeafCELoss,
    losses.PerLevelCELoss,
    losses.CoarseConstraintLoss,
    losses.MCLoss,
    losses.HMCNFLoss,
    losses.ChangLoss,
    losses.HMCLMLPLoss,
)
LOSSES: dict[str, type[nn.Module]] = {
    **{f"hrn.losses.{cls.__name__}": cls for cls in _LOSS_CLASSES},
    **{f"hrn.baselines.{c.__name__}": c for c in _LOSS_CLASSES[4:]},  # before 0.2
}
"""The losses a checkpoint may name (``loss._target_``): the losses' public paths, and their older ones."""

BUILDER_KEYS = ("pretrained", "weights")
"""Network settings that say where the trunk's starting weights come from: the builder's business, not the
network's; a checkpoint carries its own weights."""

LEGACY_KEYS = ("channels_last",)
"""Settings that checkpoints written before 0.2 kept with the network (now the LightningModule's)."""


class CheckpointError(HRNError):
    """A checkpoint that is missing, unreadable or not written by ``hrn.train``."""


TRUST_HINT = (
    "a checkpoint you wrote yourself with hrn before 0.2 loads with trust_checkpoint=true (unsafe for files from "
    "others: it lets the file run code)"
)


def read_checkpoint(path: str | Path, trust: bool = False) -> dict:
    """Read an HRN checkpoint (a dict with ``state_dict`` and the :data:`CHECKPOINT_KEY` self-description) with
    torch's safe unpickler (``weights_only=True``), which builds tensors and plain containers and calls nothing
    else; or raise one line: missing, unreadable (truncated, not PyTorch), foreign, or holding anything that
    would run code (refused, with the global it names).

    ``trust=True`` (``trust_checkpoint=true``) loads with the full unpickler instead: for checkpoints written by
    hrn before 0.2 (their random-generator states are NumPy arrays), and only for files of one's own.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if trust or "Weights only load failed" not in str(e):
            raise CheckpointError(
                f"ckpt_path={path}: cannot read the checkpoint ({type(e).__name__})"
            ) from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"loading it would call {found.group(1)}" if found else "it holds objects that could run code"
        raise CheckpointError(
            f"ckpt_path={path}: refused: {what}, and hrn loads checkpoints with torch's safe unpickler, which runs "
            f"no code; {TRUST_HINT}"
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


def describe_network(net: nn.Module, settings: Mapping) -> dict:
    """The network part of a checkpoint's description: the network's public class path and the settings it was
    built with (``model.*``), less where its trunk's starting weights came from (:data:`BUILDER_KEYS`)."""
    path = f"hrn.nets.{type(net).__name__}"
    if NETWORKS.get(path) is not type(net):
        path = f"{type(net).__module__}.{type(net).__qualname__}"  # a network of the user's own
    return {"_target_": path, **{k: v for k, v in settings.items() if k not in ("_target_", *BUILDER_KEYS)}}


def _build(kind: str, table: Mapping[str, Callable], description: Mapping, where: str, **kwargs):
    """``table[description["_target_"]](**settings, **kwargs)``, or one line naming what is wrong."""
    target = str(description.get("_target_"))
    if target not in table:
        raise CheckpointError(
            f"{where}: {kind} {target!r} is not one of the package's ({', '.join(sorted(set(table)))})"
        )
    cls = table[target]
    settings = {k: v for k, v in description.items() if k not in ("_target_", *BUILDER_KEYS, *LEGACY_KEYS)}
    parameters = inspect.signature(cls).parameters
    accepted = set(parameters)
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):  # a network's **trunk_options
        accepted |= set(TRUNK_OPTIONS)
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise CheckpointError(f"{where}: {kind} {target} has no setting(s) {', '.join(unknown)}")
    return cls(**settings, **kwargs)


def build_network(description: Mapping, hierarchy: Hierarchy, where: str = "checkpoint") -> nn.Module:
    """The network a description names (:func:`describe_network`), randomly initialised."""
    return _build("network", NETWORKS, description, where, hierarchy=hierarchy)


def build_loss(
    description: Mapping | None, hierarchy: Hierarchy, where: str = "checkpoint"
) -> HierarchicalLoss:
    """The loss a description names (the paper's composite loss when it names none)."""
    return _build(
        "loss", LOSSES, description or {"_target_": "hrn.losses.CompositeLoss"}, where, hierarchy=hierarchy
    )


@dataclass
class LoadedModel:
    """A trained network and everything needed to use it, from a checkpoint alone.

    Attributes:
        net: the plain network (:mod:`hrn.nets`), in eval mode, on the CPU.
        hierarchy: its label tree, with the node names.
        tree_scores: where its node probabilities come from (:data:`hrn.tree.TREE_SCORES`), as in training.
        description: the checkpoint's self-description (``tree``, ``net``, ``loss``, ``dataset``, ``data`` with
            the transform sizes ``resize`` and ``crop``).
        source: the file it was read from.
    """

    net: nn.Module
    hierarchy: Hierarchy
    tree_scores: str
    description: dict
    source: Path

    @property
    def resize(self) -> int:
        return int(self.description.get("data", {}).get("resize", 550))

    @property
    def crop(self) -> int:
        return int(self.description.get("data", {}).get("crop", 448))

    def transform(self):
        """The test transform: PIL image or uint8 (3, H, W) tensor -> float (3, crop, crop)
        (Resize(resize, resize) -> CenterCrop(crop) -> Normalize(0.5, 0.5))."""
        return eval_transform(self.resize, self.crop)

    @property
    def calibration(self) -> dict | None:
        """The temperatures ``hrn.calibrate`` fitted (``tree_temperature`` per level, ``leaf_temperature``), or
        None for a model that was not calibrated."""
        return self.description.get("calibration")

    def probabilities(self) -> TreeProbabilities:
        """Its node probabilities: :class:`hrn.tree.TreeProbabilities` with the model's temperatures, if any."""
        return TreeProbabilities.calibrated(self.hierarchy, self.calibration)

    def build_loss(self) -> HierarchicalLoss:
        """The loss the network was trained with (for evaluating it: ``hrn.evaluate``'s loss terms)."""
        return build_loss(self.description.get("loss"), self.hierarchy, f"ckpt_path={self.source}")


def _tree_scores(description: dict, loss: HierarchicalLoss) -> str:
    # written since 0.2; older checkpoints say it through their loss
    return check_tree_scores(description.get("tree_scores") or loss.tree_scores)


def load_checkpoint(path: str | Path, trust: bool = False) -> LoadedModel:
    """The trained network of an ``hrn.train`` checkpoint, or of a shared folder (``model.safetensors`` and
    ``config.json``, :mod:`hrn.share`), rebuilt from the file alone (see :class:`LoadedModel`).

    A checkpoint is read with torch's safe unpickler (:func:`read_checkpoint`; ``trust`` as there). A missing,
    truncated or foreign file, one that would run code, a network or loss the package does not have, or weights
    that do not fit the network the file describes: one line (:class:`CheckpointError`).
    """
    path = Path(path)
    if path.is_dir():
        from hrn.share import load_folder  # the share format builds on this module

        return load_folder(path)
    ckpt = read_checkpoint(path, trust)
    meta = ckpt[CHECKPOINT_KEY]
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return model_from(meta, state, path)


def model_from(description: dict, state: Mapping[str, torch.Tensor], path: Path) -> LoadedModel:
    """The :class:`LoadedModel` a description (tree, net, loss, ...) and the network's state dict make."""
    where = f"ckpt_path={path}"
    h = Hierarchy.from_dict(description["tree"])
    net = build_network(description.get("net") or {}, h, where)
    loss = build_loss(description.get("loss"), h, where)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{where}: weights do not fit the network it describes ({first})") from None
    return LoadedModel(net.eval(), h, _tree_scores(description, loss), description, path)
