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
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from hrn.errors import HRNError
from hrn.hierarchy import Hierarchy

__all__ = ["HRN", "HRNOutput", "TRUNKS", "ModelError", "trunk_channels", "trunk_param_groups"]

log = logging.getLogger(__name__)

# Torchvision trunks and their output channels C. The GSB width F defaults to C / 2 (1024 for ResNet-50, the
# authors' value), so the heads scale with the trunk.
TRUNKS: dict[str, int] = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
}
COMBINES = ("sum", "concat", "none")


class ModelError(HRNError):
    """A model setting the package cannot use; one line that says how to fix it."""


@dataclass
class HRNOutput:
    """What :class:`HRN` returns.

    Attributes:
        sigmoid: per level, coarse -> fine, (B, n_l) sigmoid outputs ``s_l``.
        logits: per level, the (B, n_l) pre-sigmoid logits (for the raw-logit tree-loss ablation).
        leaf_logits: (B, n_L) logits of the leaf softmax branch.
    """

    sigmoid: list[torch.Tensor]
    logits: list[torch.Tensor]
    leaf_logits: torch.Tensor

    def scores(self, kind: str = "sigmoid") -> torch.Tensor:
        """(B, N) concatenation, coarse -> fine, of the sigmoid outputs (``"sigmoid"``) or the raw logits."""
        return torch.cat(self.sigmoid if kind == "sigmoid" else self.logits, dim=1)


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


def trunk_channels(name: str) -> int:
    """C, the output channels of trunk ``name``; one line listing the valid trunks for an unknown name."""
    if name not in TRUNKS:
        raise ModelError(f"unknown trunk {name!r}; valid trunks: {', '.join(TRUNKS)}")
    return TRUNKS[name]


def trunk_param_groups(net: nn.Module, trunk_lr_scale: float) -> list[dict]:
    """Optimiser groups of a network with a ``trunk``: the trunk with ``lr_scale = trunk_lr_scale`` (paper 0.1),
    every other parameter with 1. The optimiser's base learning rate is multiplied by each group's ``lr_scale``
    (see ``hrn.lit``)."""
    trunk = set(map(id, net.trunk.parameters()))
    return [
        {"params": list(net.trunk.parameters()), "lr_scale": trunk_lr_scale, "name": "trunk"},
        {"params": [p for p in net.parameters() if id(p) not in trunk], "lr_scale": 1.0, "name": "heads"},
    ]


def build_trunk(name: str, pretrained: bool = False, weights: str | Path | None = None) -> nn.Sequential:
    """A torchvision ResNet without ``avgpool`` and ``fc``: (B, 3, H, W) -> (B, C, H/32, W/32).

    ``pretrained=True`` loads torchvision's original ImageNet-1k weights (``IMAGENET1K_V1``, as the paper);
    ``weights`` loads a torchvision state dict from a file instead (offline machines).
    """
    trunk_channels(name)  # checks the name
    net = getattr(torchvision.models, name)(weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelError(
                f"model.weights={path}: file not found (expected a torchvision {name} state dict)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            net.load_state_dict(state)
        except Exception as e:  # noqa: BLE001 - any failure here means "not a usable state dict"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"model.weights={path}: not a torchvision {name} state dict ({first})") from None
    elif pretrained:
        enum = torchvision.models.get_model_weights(name)
        try:
            net.load_state_dict(enum.IMAGENET1K_V1.get_state_dict(progress=False))
        except Exception as e:  # noqa: BLE001 - offline machines fail inside urllib with many error types
            raise ModelError(
                f"cannot load ImageNet weights for {name} ({type(e).__name__}: the download failed, "
                f"probably offline); pass model.weights=/path/to/{name}.pth (a torchvision state dict) "
                "or model.pretrained=false"
            ) from None
    return nn.Sequential(*list(net.children())[:-2])


class HRN(nn.Module):
    """Hierarchical Residual Network.

    Args:
        hierarchy: the label tree (only its level sizes are kept).
        trunk: torchvision ResNet name, see ``TRUNKS``.
        pretrained: load ImageNet-1k weights into the trunk.
        weights: path of a torchvision state dict for the trunk (overrides ``pretrained``).
        width: F, width of the GSBs and projections; default C / 2 (1024 for ResNet-50, as the authors).
        dim: D, width of the level embeddings h_l (512 in the paper).
        gsb: use the granularity-specific blocks; off = the pooled trunk features go straight to the projections.
        combine: hierarchical residual link: ``"sum"`` (paper, z_l = h_1 + ... + h_l), ``"concat"``
            ([h_1, ..., h_l]) or ``"none"`` (z_l = h_l).
        relu: apply ReLU after the combine (paper: on).
        trunk_lr_scale: learning-rate factor of the trunk's parameter group (paper: 10x smaller).
        channels_last: keep activations in channels-last memory format (faster convolutions on most GPUs).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        trunk: str = "resnet50",
        pretrained: bool = False,
        weights: str | Path | None = None,
        width: int | None = None,
        dim: int = 512,
        gsb: bool = True,
        combine: str = "sum",
        relu: bool = True,
        trunk_lr_scale: float = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ModelError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
        channels = trunk_channels(trunk)
        width = width or channels // 2
        self.level_sizes = hierarchy.level_sizes
        self.combine = combine
        self.trunk_lr_scale = trunk_lr_scale
        self.channels_last = channels_last

        self.trunk = build_trunk(trunk, pretrained, weights)
        levels = range(len(self.level_sizes))
        self.gsbs = nn.ModuleList(GSB(channels, width) for _ in levels) if gsb else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.projections = nn.ModuleList(Projection(channels, width, dim) for _ in levels)
        self.act = nn.ReLU() if relu else nn.Identity()
        head_in = [dim * (lvl + 1) if combine == "concat" else dim for lvl in levels]
        self.heads = nn.ModuleList(nn.Linear(d, n) for d, n in zip(head_in, self.level_sizes, strict=True))
        self.leaf_head = nn.Linear(head_in[-1], self.level_sizes[-1])
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> per level, the level feature z_l (B, D) or (B, l·D) for ``combine="concat"``."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.trunk(images)  # (B, C, h, w)
        h = []  # h_l, (B, D) each
        for lvl, proj in enumerate(self.projections):
            x_l = self.gsbs[lvl](x) if self.gsbs is not None else x
            h.append(proj(self.pool(x_l).flatten(1)))
        if self.combine == "sum":  # each level adds its own features to all of its ancestors'
            return [self.act(z) for z in torch.stack(h).cumsum(0)]
        if self.combine == "concat":
            return [self.act(torch.cat(h[: lvl + 1], dim=1)) for lvl in range(len(h))]
        return [self.act(z) for z in h]

    def forward_head(self, z: list[torch.Tensor]) -> HRNOutput:
        """Level features -> sigmoid outputs per level and the leaf softmax logits."""
        logits = [head(z_l) for head, z_l in zip(self.heads, z, strict=True)]  # (B, n_l) each
        return HRNOutput(
            sigmoid=[t.sigmoid() for t in logits], logits=logits, leaf_logits=self.leaf_head(z[-1])
        )

    def forward(self, images: torch.Tensor) -> HRNOutput:
        return self.forward_head(self.forward_features(images))

    def feature_layers(self, kind: str = "gsb") -> list[nn.Module]:
        """Per level, the layer whose output shows where that level looks (Grad-CAM): its GSB, or the trunk's
        last block for every level (``kind="trunk"`` or when GSBs are off)."""
        if kind == "gsb" and self.gsbs is not None:
            return list(self.gsbs)
        return [self.trunk[-1]] * len(self.level_sizes)

    def param_groups(self) -> list[dict]:
        """Optimiser groups: the trunk with ``lr_scale = trunk_lr_scale`` (paper 0.1), the new layers with 1."""
        return trunk_param_groups(self, self.trunk_lr_scale)
