"""The Hierarchical Residual Network (Chen, Wang, Liu, Qian, CVPR 2022).

    image ─ trunk (ResNet without avgpool/fc) ─ x (B, C, H/32, W/32)
              ├─ GSB_1 ─ pool ─ proj_1 ─ h_1 ─┐ z_1 = ReLU(h_1)                 ─ head_1 ─ sigmoid ─ s_1
              ├─ GSB_2 ─ pool ─ proj_2 ─ h_2 ─┤ z_2 = ReLU(h_1 + h_2)           ─ head_2 ─ sigmoid ─ s_2
              └─ GSB_L ─ pool ─ proj_L ─ h_L ─┘ z_L = ReLU(h_1 + ... + h_L)     ─ head_L ─ sigmoid ─ s_L
                                                                                └ leaf head ─ leaf logits (softmax)

Shapes: B = batch, C = trunk channels (2048 for ResNet-50), F = GSB / projection width (1024 for ResNet-50),
D = 512 (embedding), n_l = classes of level l.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from hrn.nets.output import HRNOutput
from hrn.nets.trunks import ModelError, Trunk, TrunkNetwork
from hrn.tree import Hierarchy

__all__ = ["COMBINES", "GSB", "HRN", "Projection"]

COMBINES = ("sum", "concat", "none")

log = logging.getLogger(__name__)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    # BatchNorm momentum 0.01 as in the authors' BasicConv (a slow running average).
    return [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.01),
        nn.ReLU(inplace=True),
    ]


class GSB(nn.Sequential):
    """Granularity-specific block: 1x1 conv C->F, BN, ReLU, 3x3 conv F->C, BN, ReLU. (B, C, h, w) -> same shape."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__(*_conv_bn_relu(channels, width, 1), *_conv_bn_relu(width, channels, 3))


class Projection(nn.Sequential):
    """BN1d(C) -> Linear(C->F) -> BN1d(F) -> ELU -> Linear(F->D): pooled (B, C) -> h_l (B, D)."""

    def __init__(self, channels: int, width: int, dim: int) -> None:
        super().__init__(
            nn.BatchNorm1d(channels),
            nn.Linear(channels, width),
            nn.BatchNorm1d(width),
            nn.ELU(inplace=True),
            nn.Linear(width, dim),
        )


class HRN(TrunkNetwork):
    """Hierarchical Residual Network.

    Build it with :meth:`HRN.build` to start the trunk from ImageNet weights or a file (``pretrained``,
    ``weights``); ``HRN(...)`` itself builds the architecture with a randomly initialised trunk.

    Args:
        hierarchy: the label tree (only its level sizes are kept).
        trunk: a trunk name (torchvision ResNets, :data:`hrn.nets.trunks.TRUNKS`) or a built
            :class:`~hrn.nets.trunks.Trunk`.
        width: F, width of the GSBs and projections; default C / 2 (1024 for ResNet-50, as the authors).
        dim: D, width of the level embeddings h_l (512 in the paper).
        gsb: use the granularity-specific blocks; off = the pooled trunk features go straight to the projections.
        combine: hierarchical residual link: ``"sum"`` (paper, z_l = h_1 + ... + h_l), ``"concat"``
            ([h_1, ..., h_l]) or ``"none"`` (z_l = h_l).
        relu: apply ReLU after the combine (paper: on).
        trunk_lr_scale: learning-rate factor of the trunk's parameter group (paper: 10x smaller).
        trunk_options: the trunk's ``stem``, ``stem_stride`` and ``image_size``
            (:class:`~hrn.nets.trunks.TrunkNetwork`). With ``image_size`` known, a GSB that would see a 1x1 map
            (its 3x3 convolution reduced to the centre tap) is said in a warning.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str | Trunk = "resnet50",
        width: int | None = None,
        dim: int = 512,
        gsb: bool = True,
        combine: str = "sum",
        relu: bool = True,
        trunk_lr_scale: float = 0.1,
        **trunk_options,
    ) -> None:
        if combine not in COMBINES:
            raise ModelError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
        super().__init__(hierarchy, trunk, trunk_lr_scale, **trunk_options)
        if gsb and self.map_side == 1:
            log.warning(
                "model.trunk=%s at %s px leaves a 1x1 feature map: each GSB's 3x3 convolution sees only its centre; "
                "give the trunk larger images or a small-image stem (model.stem=small for a ResNet)",
                self.trunk_name,
                trunk_options.get("image_size"),
            )
        channels = self.channels
        width = width or channels // 2
        self.combine = combine
        levels = range(len(self.level_sizes))
        self.gsbs = nn.ModuleList(GSB(channels, width) for _ in levels) if gsb else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.projections = nn.ModuleList(Projection(channels, width, dim) for _ in levels)
        self.act = nn.ReLU() if relu else nn.Identity()
        head_in = [dim * (lvl + 1) if combine == "concat" else dim for lvl in levels]
        self.heads = nn.ModuleList(nn.Linear(d, n) for d, n in zip(head_in, self.level_sizes, strict=True))
        self.leaf_head = nn.Linear(head_in[-1], self.level_sizes[-1])

    # forward_features (the trunk's map, as in timm) comes from TrunkNetwork: (B, 3, H, W) -> (B, C, h, w).

    def level_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's map (B, C, h, w) -> per level, the level feature z_l (B, D), or (B, l·D) for
        ``combine="concat"``: GSB_l, pooling and projection give h_l, then the hierarchical residual links."""
        h = []  # h_l, (B, D) each
        for lvl, proj in enumerate(self.projections):
            x_l = self.gsbs[lvl](x) if self.gsbs is not None else x
            h.append(proj(self.pool(x_l).flatten(1)))
        if self.combine == "sum":  # each level adds its own features to all of its ancestors'
            return [self.act(z) for z in torch.stack(h).cumsum(0)]
        if self.combine == "concat":
            return [self.act(torch.cat(h[: lvl + 1], dim=1)) for lvl in range(len(h))]
        return [self.act(z) for z in h]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> HRNOutput | list[torch.Tensor]:
        """The trunk's map (B, C, h, w) -> the heads' outputs: per level the sigmoid head on z_l, and the leaf
        softmax head on z_L. ``pre_logits=True``: the level features z_l alone (:meth:`level_features`), as
        timm's ``forward_head(x, pre_logits=True)`` gives the features before the classifier."""
        z = self.level_features(x)
        if pre_logits:
            return z
        logits = [head(z_l) for head, z_l in zip(self.heads, z, strict=True)]  # (B, n_l) each
        return HRNOutput(
            level_probs=[t.sigmoid() for t in logits], level_logits=logits, leaf_logits=self.leaf_head(z[-1])
        )

    def forward(self, images: torch.Tensor) -> HRNOutput:
        return self.forward_head(self.forward_features(images))

    def feature_layers(self, kind: str = "gsb") -> list[tuple[nn.Module, Callable | None]]:
        """Per level, the layer whose output shows where that level looks (Grad-CAM) and the reshape of that output
        to (B, C, h, w) (None: it is one): its GSB, or the trunk's last block for every level (``kind="trunk"`` or
        when GSBs are off)."""
        if kind == "gsb" and self.gsbs is not None:
            return [(gsb, None) for gsb in self.gsbs]
        return super().feature_layers()
