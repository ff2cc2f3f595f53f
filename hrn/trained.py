"""A trained model rebuilt from its description (:class:`hrn.description.ModelDescription`) and its weights:
:class:`LoadedModel`, what ``hrn.load_checkpoint`` gives for a checkpoint (:mod:`hrn.checkpoints`) or a shared
folder (:mod:`hrn.share`) alike.

A network or loss is built only when the description names one of the package's own classes (:data:`NETWORKS`,
:data:`LOSSES`): a description is input from strangers, and reading one never imports or calls anything it names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hrn.data.augment import eval_transform
from hrn.description import CheckpointError, ModelDescription
from hrn.losses import (
    ChangLoss,
    CoarseConstraintLoss,
    CompositeLoss,
    HierarchicalLoss,
    HMCLMLPLoss,
    HMCNFLoss,
    LeafCELoss,
    MCLoss,
    PerLevelCELoss,
)
from hrn.nets import CHMCNN, HMCLMLP, HMCNF, HRN, ChangNet
from hrn.nets.trunks import TRUNK_OPTIONS
from hrn.tree import Hierarchy, TreeProbabilities, check_tree_scores

__all__ = [
    "BUILDER_KEYS",
    "LOSSES",
    "NETWORKS",
    "LoadedModel",
    "build_loss",
    "build_network",
    "describe_network",
    "model_from",
]

_COMPARED = (CHMCNN, HMCNF, ChangNet, HMCLMLP)
NETWORKS: dict[str, type[nn.Module]] = {
    **{f"hrn.nets.{cls.__name__}": cls for cls in (HRN, *_COMPARED)},
    # where checkpoints written before the package's layout of 0.2 name them
    "hrn.model.HRN": HRN,
    **{f"hrn.baselines.{c.__name__}": c for c in _COMPARED},
}
"""The networks a description may name, by the path it gives (``net._target_``)."""

_COMPARED_LOSSES = (MCLoss, HMCNFLoss, ChangLoss, HMCLMLPLoss)
LOSSES: dict[str, type[nn.Module]] = {
    **{
        f"hrn.losses.{cls.__name__}": cls
        for cls in (CompositeLoss, LeafCELoss, PerLevelCELoss, CoarseConstraintLoss, *_COMPARED_LOSSES)
    },
    **{f"hrn.baselines.{c.__name__}": c for c in _COMPARED_LOSSES},  # before 0.2
}
"""The losses a description may name (``loss._target_``): the losses' public paths, and their older ones."""

BUILDER_KEYS = ("pretrained", "weights")
"""Network settings that say where the trunk's starting weights come from: the builder's business, not the
network's; a checkpoint carries its own weights."""

LEGACY_KEYS = ("channels_last",)
"""Settings that checkpoints written before 0.2 kept with the network (now the LightningModule's)."""


def describe_network(net: nn.Module, settings: Mapping) -> dict:
    """The ``net`` part of a description: the network's public class path and the settings it was built with
    (``model.*``), less where its trunk's starting weights came from (:data:`BUILDER_KEYS`)."""
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
    try:
        return cls(**settings, **kwargs)
    except (TypeError, ValueError) as e:  # a setting of the wrong type or value: the file's fault, not ours
        raise CheckpointError(f"{where}: {kind} {target} cannot be built from its settings ({e})") from None


def build_network(description: Mapping, hierarchy: Hierarchy, where: str = "checkpoint") -> nn.Module:
    """The network a ``net`` description names (:func:`describe_network`), randomly initialised."""
    return _build("network", NETWORKS, description, where, hierarchy=hierarchy)


def build_loss(
    description: Mapping | None, hierarchy: Hierarchy, where: str = "checkpoint"
) -> HierarchicalLoss:
    """The loss a ``loss`` description names (the paper's composite loss when it names none)."""
    return _build(
        "loss", LOSSES, description or {"_target_": "hrn.losses.CompositeLoss"}, where, hierarchy=hierarchy
    )


@dataclass
class LoadedModel:
    """A trained network and everything needed to use it, from a checkpoint (or shared folder) alone.

    Attributes:
        net: the plain network (:mod:`hrn.nets`), in eval mode, on the CPU.
        description: what the model says of itself (:class:`~hrn.description.ModelDescription`: tree, network,
            loss, transform sizes, dataset, calibration, version); its ``tree_scores`` always set.
        source: the file or folder it was read from.
    """

    net: nn.Module
    description: ModelDescription
    source: Path

    @property
    def hierarchy(self) -> Hierarchy:
        """Its label tree, with the node names."""
        return self.description.tree

    @property
    def tree_scores(self) -> str:
        """Where its node probabilities come from (:data:`hrn.tree.TREE_SCORES`), as in training."""
        return self.description.tree_scores

    @property
    def resize(self) -> int:
        return self.description.resize

    @property
    def crop(self) -> int:
        return self.description.crop

    @property
    def calibration(self) -> dict | None:
        """The temperatures ``hrn.calibrate`` fitted, or None for a model that was not calibrated."""
        return self.description.calibration

    def transform(self):
        """The test transform: PIL image or uint8 (3, H, W) tensor -> float (3, crop, crop)
        (Resize(resize, resize) -> CenterCrop(crop) -> Normalize(0.5, 0.5))."""
        return eval_transform(self.resize, self.crop)

    def probabilities(self) -> TreeProbabilities:
        """Its node probabilities: :class:`hrn.tree.TreeProbabilities` with the model's temperatures, if any."""
        return TreeProbabilities.calibrated(self.hierarchy, self.calibration)

    def build_loss(self) -> HierarchicalLoss:
        """The loss the network was trained with (for evaluating it: ``hrn.evaluate``'s loss terms)."""
        return build_loss(self.description.loss, self.hierarchy, f"ckpt_path={self.source}")


def model_from(description: Mapping, state: Mapping[str, torch.Tensor], path: Path) -> LoadedModel:
    """The :class:`LoadedModel` that a description (plain data, validated here) and the network's state dict
    make; one line for a malformed description or weights that do not fit the network it describes."""
    where = f"ckpt_path={path}"
    d = ModelDescription.from_dict(description, where)
    net = build_network(d.net, d.tree, where)
    loss = build_loss(d.loss, d.tree, where)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{where}: weights do not fit the network it describes ({first})") from None
    # written since 0.2; older checkpoints say it through their loss
    tree_scores = check_tree_scores(d.tree_scores or loss.tree_scores)
    return LoadedModel(net.eval(), d.replace(tree_scores=tree_scores), path)
