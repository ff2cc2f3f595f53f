"""Trunks: the one place that turns a trunk name into a feature extractor, its channels and its starting weights,
for HRN and every compared method alike; and :class:`TrunkNetwork`, what every network on a trunk shares.

A backbone family plugs in here (:func:`build_trunk`): torchvision's ResNets (``model.trunk=resnet50``, the paper's,
with a small-image stem as an option) and any timm model that yields a feature map (``model.trunk=timm:<name>``,
:mod:`hrn.nets.timm_trunk`); every network of :mod:`hrn.nets` takes what it builds.

Shapes: B = batch, C = trunk channels (2048 for ResNet-50), h x w = the trunk's feature map (H/32 x W/32 for a
ResNet with its standard stem).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from hrn.nets.timm_trunk import TIMM_PREFIX, build_timm_trunk
from hrn.nets.weights import ModelError, first_line, read_state_dict
from hrn.tree import Hierarchy

__all__ = [
    "STEMS",
    "TRUNKS",
    "ModelError",
    "Trunk",
    "TrunkNetwork",
    "build_trunk",
    "read_state_dict",
    "trunk_param_groups",
]

# The torchvision trunks; their channels C are read off the built model (the classifier's in_features). The GSB
# width F defaults to C / 2 (1024 for ResNet-50, the authors' value), so the heads scale with the trunk.
TRUNKS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

STEMS = ("standard", "small")
"""``model.stem`` of a ResNet trunk: ``standard`` (torchvision's 7x7 stride-2 convolution and max-pool: maps of H/32,
the paper's), ``small`` (a 3x3 convolution of stride ``model.stem_stride`` 1 or 2 and no max-pool, as CIFAR-style
ResNets: maps of H/8 or H/16, so that 32 px images still leave the GSBs a map to convolve)."""

log = logging.getLogger(__name__)


@dataclass
class Trunk:
    """A feature extractor and what a network needs to know of it.

    Attributes:
        name: the trunk's name (``model.trunk``).
        module: (B, 3, H, W) -> (B, C, h, w).
        channels: C.
        reduction: the input's side over the map's (32 for a ResNet's standard stem).
    """

    name: str
    module: nn.Module
    channels: int
    reduction: int = 32

    def cam_layer(self) -> tuple[nn.Module, Callable | None]:
        """The layer Grad-CAM looks at on the trunk, and the reshape of its output to (B, C, h, w) (None: it is one)."""
        if hasattr(self.module, "cam_layer"):  # a timm trunk knows its own
            return self.module.cam_layer()
        return self.module[-1], None  # a ResNet's last stage

    def map_side(self, image_size: int) -> int:
        """The side of the feature map for square ``image_size`` inputs."""
        return math.ceil(image_size / self.reduction)


def _state_dict(name: str, pretrained: bool, weights: str | Path | None) -> dict | None:
    """The torchvision state dict to start ``name`` from: a file (``weights``), torchvision's original ImageNet-1k
    weights (``pretrained``, ``IMAGENET1K_V1`` as the paper), or None (random initialisation)."""
    if weights is not None:
        return read_state_dict(weights, f"a torchvision {name} state dict")
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


def _small_stem(net: nn.Module, stride: int) -> None:
    """Replace a torchvision ResNet's stem (7x7 stride-2 convolution, max-pool) by a 3x3 convolution of ``stride``
    and no max-pool, in place: the CIFAR ResNets' stem, for small images."""
    net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=stride, padding=1, bias=False)
    net.maxpool = nn.Identity()


def build_trunk(
    name: str,
    pretrained: bool = False,
    weights: str | Path | None = None,
    stem: str = "standard",
    stem_stride: int = 1,
    image_size: int | None = None,
) -> Trunk:
    """Trunk ``name``: a torchvision ResNet without ``avgpool`` and ``fc``, (B, 3, H, W) -> (B, C, H/32, W/32), or a
    timm model (``timm:<name>``, :func:`hrn.nets.timm_trunk.build_timm_trunk`).

    Its weights: a state dict from a file (``weights``, for offline machines), the published ImageNet weights
    (``pretrained=True``: torchvision's original ``IMAGENET1K_V1`` for ResNets, as the paper; timm's for timm
    models), or a random initialisation. ``stem="small"`` gives a ResNet the small-image stem of :data:`STEMS`
    (its first convolution is then new: a weights file or the ImageNet weights start everything else).
    ``image_size``: the input's side, for timm models built for one (ViTs' position embeddings).
    """
    if stem not in STEMS:
        raise ModelError(f"model.stem={stem!r}: use one of {', '.join(STEMS)}")
    if stem_stride not in (1, 2):
        raise ModelError(
            f"model.stem_stride={stem_stride!r}: the small stem's stride is 1 (maps of H/8) or 2 (H/16)"
        )
    if name.startswith(TIMM_PREFIX):
        if stem != "standard":  # a dataset's recipe may pick the small stem for its ResNet
            log.info("model.stem=%s is for ResNet trunks; %s keeps its own stem", stem, name)
        module, channels, reduction = build_timm_trunk(
            name[len(TIMM_PREFIX) :], pretrained, weights, image_size
        )
        return Trunk(name, module, channels, reduction)
    if name not in TRUNKS:
        raise ModelError(
            f"unknown trunk {name!r}; valid trunks: {', '.join(TRUNKS)}, or any timm model as timm:<name>"
        )
    net = getattr(torchvision.models, name)(weights=None)
    channels = net.fc.in_features  # what the dropped classifier took: the last stage's channels
    state = _state_dict(name, pretrained, weights)
    if state is not None:
        try:
            net.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - any failure here means "not a usable state dict"
            where = f"model.weights={weights}" if weights is not None else f"the ImageNet weights of {name}"
            raise ModelError(f"{where}: not a torchvision {name} state dict ({first_line(e)})") from None
    reduction = 32
    if stem == "small":
        _small_stem(net, stem_stride)
        reduction = 8 * stem_stride
    return Trunk(name, nn.Sequential(*list(net.children())[:-2]), channels, reduction)


def trunk_param_groups(net: nn.Module, trunk_lr_scale: float) -> list[dict]:
    """Optimiser groups of a network with a ``trunk``: the trunk with ``lr_scale = trunk_lr_scale`` (paper 0.1),
    every other parameter with 1. The optimiser's base learning rate is multiplied by each group's ``lr_scale``
    (:class:`hrn.training.HRNModule`)."""
    trunk = set(map(id, net.trunk.parameters()))
    return [
        {"params": list(net.trunk.parameters()), "lr_scale": trunk_lr_scale, "name": "trunk"},
        {"params": [p for p in net.parameters() if id(p) not in trunk], "lr_scale": 1.0, "name": "heads"},
    ]


TRUNK_OPTIONS = ("stem", "stem_stride", "image_size")
"""The trunk's settings beside its name (:func:`build_trunk`), which every network takes as ``**trunk_options``."""


class TrunkNetwork(nn.Module):
    """What HRN and every compared method share: a trunk, the tree's level sizes, the trunk's learning-rate scale
    and a builder that starts the trunk from given weights.

    ``__init__`` builds the architecture with a randomly initialised trunk (a trunk name) or takes a built one
    (a :class:`Trunk`); :meth:`build` is the builder a config names (``_target_: hrn.nets.HRN.build``): it loads
    the trunk's starting weights first, as torchvision's builders do, never the network's ``__init__``.

    Args:
        hierarchy: the label tree (only its level sizes are kept).
        trunk: a trunk name (:data:`TRUNKS`, or ``timm:<name>``), or a built :class:`Trunk`.
        trunk_lr_scale: learning-rate factor of the trunk's parameter group (paper: 10x smaller).
        stem, stem_stride: a ResNet trunk's stem (:data:`STEMS`).
        image_size: the side of the (square) input images, the dataset's crop: timm models with position
            embeddings are built for it, and it tells the size of the feature map.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str | Trunk,
        trunk_lr_scale: float,
        stem: str = "standard",
        stem_stride: int = 1,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        built = (
            trunk
            if isinstance(trunk, Trunk)
            else build_trunk(trunk, stem=stem, stem_stride=stem_stride, image_size=image_size)
        )
        self.trunk = built.module
        self.trunk_name = built.name
        self.channels = built.channels
        self.level_sizes = hierarchy.level_sizes
        self.trunk_lr_scale = trunk_lr_scale
        self.map_side = (
            built.map_side(image_size) if image_size else None
        )  # of the feature map, None: unknown
        self._cam_layer = [
            built.cam_layer()
        ]  # a list: kept out of the module tree (the layer is already in it)

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
        published ImageNet weights; ``settings`` are the network's own arguments and its ``**trunk_options``."""
        options = {k: settings[k] for k in TRUNK_OPTIONS if k in settings}
        return cls(hierarchy, build_trunk(trunk, pretrained, weights, **options), **settings)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's feature map, as timm's ``forward_features``: (B, 3, H, W) -> (B, C, h, w)."""
        return self.trunk(images)

    def feature_layers(self, kind: str = "trunk") -> list[tuple[nn.Module, Callable | None]]:
        """Per level, the layer Grad-CAM looks at and the reshape of its output to (B, C, h, w) (None: it is one):
        the trunk's last block (networks with level-specific blocks override this)."""
        return self._cam_layer * len(self.level_sizes)

    def param_groups(self) -> list[dict]:
        """Optimiser groups: the trunk with ``lr_scale = trunk_lr_scale`` (paper 0.1), the new layers with 1."""
        return trunk_param_groups(self, self.trunk_lr_scale)
