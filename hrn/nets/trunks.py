"""Trunks: the one place that turns a trunk name into a feature extractor, its channels and its starting weights,
for HRN and every compared method alike; and :class:`TrunkNetwork`, what every network on a trunk shares.

A new backbone family plugs in here (:func:`build_trunk`), and every network of :mod:`hrn.nets` takes it.

Shapes: B = batch, C = trunk channels (2048 for ResNet-50), h x w = the trunk's feature map (H/32 x W/32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from hrn.errors import HRNError
from hrn.tree import Hierarchy

__all__ = [
    "TRUNKS",
    "ModelError",
    "Trunk",
    "TrunkNetwork",
    "build_trunk",
    "trunk_channels",
    "trunk_param_groups",
]

# Torchvision trunks and their output channels C. The GSB width F defaults to C / 2 (1024 for ResNet-50, the
# authors' value), so the heads scale with the trunk.
TRUNKS: dict[str, int] = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
}


class ModelError(HRNError):
    """A model setting the package cannot use; one line that says how to fix it."""


@dataclass
class Trunk:
    """A feature extractor and what a network needs to know of it.

    Attributes:
        name: the trunk's name (``model.trunk``).
        module: (B, 3, H, W) -> (B, C, h, w).
        channels: C.
    """

    name: str
    module: nn.Module
    channels: int

    @property
    def last_block(self) -> nn.Module:
        """The layer whose output is the feature map (what Grad-CAM looks at on the trunk)."""
        return self.module[-1]


def trunk_channels(name: str) -> int:
    """C, the output channels of trunk ``name``; one line listing the valid trunks for an unknown name."""
    if name not in TRUNKS:
        raise ModelError(f"unknown trunk {name!r}; valid trunks: {', '.join(TRUNKS)}")
    return TRUNKS[name]


def _state_dict(name: str, pretrained: bool, weights: str | Path | None) -> dict | None:
    """The torchvision state dict to start ``name`` from: a file (``weights``), torchvision's original ImageNet-1k
    weights (``pretrained``, ``IMAGENET1K_V1`` as the paper), or None (random initialisation)."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelError(
                f"model.weights={path}: file not found (expected a torchvision {name} state dict)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here means "not a usable state dict"
            raise ModelError(
                f"model.weights={path}: not a torchvision {name} state dict ({_first_line(e)})"
            ) from None
        return state["state_dict"] if isinstance(state, dict) and "state_dict" in state else state
    if pretrained:
        enum = torchvision.models.get_model_weights(name)
        try:
            return enum.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # noqa: BLE001 - offline machines fail inside urllib with many error types
            raise ModelError(
                f"cannot load ImageNet weights for {name} ({type(e).__name__}: the download failed, "
                f"probably offline); pass model.weights=/path/to/{name}.pth (a torchvision state dict) "
                "or model.pretrained=false"
            ) from None
    return None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def build_trunk(name: str, pretrained: bool = False, weights: str | Path | None = None) -> Trunk:
    """Trunk ``name``, a torchvision ResNet without ``avgpool`` and ``fc``: (B, 3, H, W) -> (B, C, H/32, W/32).

    Its weights: a torchvision state dict from a file (``weights``, for offline machines), torchvision's original
    ImageNet-1k weights (``pretrained=True``, ``IMAGENET1K_V1`` as the paper), or a random initialisation.
    """
    channels = trunk_channels(name)
    net = getattr(torchvision.models, name)(weights=None)
    state = _state_dict(name, pretrained, weights)
    if state is not None:
        try:
            net.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - any failure here means "not a usable state dict"
            where = f"model.weights={weights}" if weights is not None else f"the ImageNet weights of {name}"
            raise ModelError(f"{where}: not a torchvision {name} state dict ({_first_line(e)})") from None
    return Trunk(name, nn.Sequential(*list(net.children())[:-2]), channels)


def trunk_param_groups(net: nn.Module, trunk_lr_scale: float) -> list[dict]:
    """Optimiser groups of a network with a ``trunk``: the trunk with ``lr_scale = trunk_lr_scale`` (paper 0.1),
    every other parameter with 1. The optimiser's base learning rate is multiplied by each group's ``lr_scale``
    (:class:`hrn.training.HRNModule`)."""
    trunk = set(map(id, net.trunk.parameters()))
    return [
        {"params": list(net.trunk.parameters()), "lr_scale": trunk_lr_scale, "name": "trunk"},
        {"params": [p for p in net.parameters() if id(p) not in trunk], "lr_scale": 1.0, "name": "heads"},
    ]


class TrunkNetwork(nn.Module):
    """What HRN and every compared method share: a trunk, the tree's level sizes, the trunk's learning-rate scale
    and a builder that starts the trunk from given weights.

    ``__init__`` builds the architecture with a randomly initialised trunk (a trunk name) or takes a built one
    (a :class:`Trunk`); :meth:`build` is the builder a config names (``_target_: hrn.nets.HRN.build``): it loads
    the trunk's starting weights first, as torchvision's builders do, never the network's ``__init__``.

    Args:
        hierarchy: the label tree (only its level sizes are kept).
        trunk: a trunk name of :data:`TRUNKS`, or a built :class:`Trunk`.
        trunk_lr_scale: learning-rate factor of the trunk's parameter group (paper: 10x smaller).
    """

    def __init__(self, hierarchy: Hierarchy, trunk: str | Trunk, trunk_lr_scale: float) -> None:
        super().__init__()
        built = trunk if isinstance(trunk, Trunk) else build_trunk(trunk)
        self.trunk = built.module
        self.trunk_name = built.name
        self.channels = built.channels
        self.level_sizes = hierarchy.level_sizes
        self.trunk_lr_scale = trunk_lr_scale
        self._trunk_block = [built.last_block]  # a list: kept out of the module tree (it is already in it)

    @classmethod
    def build(
        cls,
        hierarchy: Hierarchy,
        trunk: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        **settings,
    ) -> TrunkNetwork:
        """The network with its trunk started from ``weights`` (a file) or, with ``pretrained``, from the trunk's
        published ImageNet weights; ``settings`` are the network's own arguments."""
        return cls(hierarchy, build_trunk(trunk, pretrained, weights), **settings)

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        return self.trunk(images)

    def feature_layers(self, kind: str = "trunk") -> list[nn.Module]:
        """Per level, the layer Grad-CAM looks at: the trunk's last block (networks with level-specific blocks
        override this)."""
        return self._trunk_block * len(self.level_sizes)

    def param_groups(self) -> list[dict]:
        """Optimiser groups: the trunk with ``lr_scale = trunk_lr_scale`` (paper 0.1), the new layers with 1."""
        return trunk_param_groups(self, self.trunk_lr_scale)
