"""timm models as trunks (``model.trunk=timm:<name>``): any timm model that yields a feature map.

ConvNets go through ``forward_features`` (an NCHW map of ``num_features`` channels: for EfficientNets and
MobileNets that is after the head convolution, 1280 channels for efficientnet_b0, where ``feature_info``'s last
entry is the last block's 320); ViT, DeiT, EVA, Swin and other models whose features are tokens or NHWC go through
``forward_intermediates(output_fmt="NCHW")``, the last block's map, of ``feature_info[-1]["num_chs"]`` channels.

C comes from timm's metadata; one forward pass at build time (a zero image at the dataset's crop) is still needed
for what the metadata does not say: which of the two a model takes (timm declares no layout for
``forward_features``: (B, N, C) tokens for a ViT, NHWC for a Swin, NCHW for a ConvNet) and the side of the map at
that crop (``feature_info``'s reduction is nominal: inception_v3 gives 5x5 at 224 px where 224/32 says 7, 1x1 at
96 px where it says 3, and a 1x1 map must be warned about). Models with a fixed grid of position embeddings are
built for the dataset's crop (``image_size``).

Shapes: B = batch, C = the trunk's channels, h x w = its feature map.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from hrn.nets.weights import ModelError, first_line, read_state_dict

__all__ = ["TIMM_PREFIX", "TimmTrunk", "build_timm_trunk", "load_weights_file"]

TIMM_PREFIX = "timm:"  # model.trunk=timm:<name>


class TimmTrunk(nn.Module):
    """A timm model as a trunk: (B, 3, H, W) -> (B, C, h, w).

    Args:
        model: the timm model, built without its classifier (``num_classes=0``).
        intermediates: take the last block's map from ``forward_intermediates(output_fmt="NCHW")`` (ViT-style
            models) instead of ``forward_features`` (ConvNets, already NCHW).
    """

    def __init__(self, model: nn.Module, intermediates: bool) -> None:
        super().__init__()
        self.model = model
        self.intermediates = intermediates

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.intermediates:
            maps = self.model.forward_intermediates(
                images, indices=1, output_fmt="NCHW", intermediates_only=True
            )
            return maps[-1]
        return self.model.forward_features(images)

    def cam_layer(self) -> tuple[nn.Module, Callable | None]:
        """The layer Grad-CAM looks at on this trunk and the reshape of its output to (B, C, h, w), None when it is
        one already. ViT-style models (``blocks`` of tokens, ``num_prefix_tokens`` of them class or register
        tokens): the last block, its patch tokens laid out on their grid, as pytorch-grad-cam's ViT example does;
        the block's tokens are the feature map here, so its gradients reach them. Others: this module's map."""
        blocks = getattr(self.model, "blocks", None)
        prefix = getattr(self.model, "num_prefix_tokens", None)
        if self.intermediates and isinstance(blocks, nn.Sequential | nn.ModuleList) and prefix is not None:
            return blocks[-1], _TokenGrid(prefix)
        return self, None


class _TokenGrid:
    """(B, prefix + h·w, C) tokens -> (B, C, h, w): drop the class / register tokens, lay the patch tokens out on
    their (square) grid. pytorch-grad-cam's ``reshape_transform`` for vision transformers."""

    def __init__(self, prefix: int) -> None:
        self.prefix = prefix

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix :]
        side = math.isqrt(patches.shape[1])
        return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


HUB_PROBE_TIMEOUT_S = 3.0


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub (timm's weights host) answers a TCP connection within a few seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _offline_unless_reachable() -> Iterator[None]:
    """Offline, huggingface_hub retries each request five times (about a minute) before it gives up: when the hub
    does not answer, switch it to offline mode for this call, so cached weights still load and missing ones fail
    at once."""
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    if not was and not _hub_reachable():
        constants.HF_HUB_OFFLINE = True  # read at call time by constants.is_offline_mode()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def _create(timm, name: str, pretrained: bool, image_size: int | None) -> nn.Module:
    """``timm.create_model`` without a classifier, at ``image_size`` where the model takes one."""
    kwargs = {"pretrained": pretrained, "num_classes": 0}
    if image_size is not None:
        try:  # models with position embeddings take img_size; the rest refuse the argument
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
    return timm.create_model(name, **kwargs)


def load_weights_file(model: nn.Module, path: str | Path, what: str) -> None:
    """Load a weights file (:func:`hrn.nets.weights.read_state_dict`) into ``model``: every key of the model must be
    there with its shape; keys the model has not (a classifier, for one) are ignored. One line naming the file
    otherwise."""
    state = read_state_dict(path, f"a state dict of {what}")
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except Exception as e:  # noqa: BLE001 - weights of other shapes
        raise ModelError(
            f"model.weights={path}: not a state dict of {what} ({first_line(e)[:200]})"
        ) from None
    if missing:
        raise ModelError(
            f"model.weights={path}: not a state dict of {what}: {len(missing)} of its weights are missing "
            f"({', '.join(missing[:3])}, ...); weights of another architecture?"
        )


def build_timm_trunk(
    name: str, pretrained: bool = False, weights: str | Path | None = None, image_size: int | None = None
) -> tuple[TimmTrunk, int, int]:
    """The timm model ``name`` as a trunk, with its channels C and reduction (input side / map side).

    Its weights: a local file (``weights``: a state dict or safetensors file, offline), timm's pretrained weights
    from its hub (``pretrained``), or a random initialisation. An unknown name, a model without a feature map or a
    failed download: one line that says what to do.
    """
    import timm

    spec = f"model.trunk={TIMM_PREFIX}{name}"
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = (
            f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?"
            if close
            else "see timm.list_models()"
        )
        raise ModelError(f"{spec}: timm has no model {name!r} ({hint})")
    try:
        download = pretrained and weights is None
        with _offline_unless_reachable() if download else contextlib.nullcontext():
            model = _create(timm, name, download, image_size)
    except Exception as e:  # noqa: BLE001 - a failed download surfaces as many error types
        if pretrained and weights is None:
            raise ModelError(
                f"{spec}: cannot load timm's pretrained weights ({type(e).__name__}: the download failed, probably "
                f"offline); pass model.weights=/path/to/{name}.safetensors (a state dict of the model) or "
                "model.pretrained=false"
            ) from None
        raise ModelError(f"{spec}: timm cannot build it at image size {image_size} ({e})") from None
    if weights is not None:
        load_weights_file(model, weights, f"timm's {name}")
    side = image_size or 224
    probe = torch.zeros(1, 3, side, side)
    was_training = model.training
    with torch.no_grad():
        model.eval()
        features = model.forward_features(probe)
        # an NCHW map of num_features channels (timm's documented width of forward_features) is a ConvNet's map
        intermediates = not (features.dim() == 4 and features.shape[1] == model.num_features)
        trunk = TimmTrunk(model, intermediates)
        if intermediates:
            if not hasattr(model, "forward_intermediates"):
                raise ModelError(
                    f"{spec}: the model gives no feature map (features of shape {tuple(features.shape)}); use a "
                    "ConvNet (forward_features) or a ViT-style model (forward_intermediates)"
                )
            features = trunk(probe)  # the map's side at this crop
    model.train(was_training)
    channels = model.feature_info[-1]["num_chs"] if intermediates else model.num_features
    return trunk, int(channels), max(1, round(side / features.shape[-1]))
