"""Per-level Grad-CAM: where each level of the tree looks in the image (what ``python -m hrn.gradcam`` draws: one PNG
grid, a row per image, the input then one heatmap overlay per level, each titled with its node and that node's
tree-marginal probability).

For each level l the network is wrapped as a classifier of that level alone (:class:`LevelLogits`: the pre-sigmoid
logits of head l, or the leaf softmax head's logits at the leaf level) and ``pytorch_grad_cam.GradCAM`` explains
one class of it (``ClassifierOutputTarget``) at the level's feature layer: its GSB output (``layer="gsb"``) or the
trunk's last block (``layer="trunk"``, the same layer for every level).

The class explained at each level is a root-to-leaf path of the tree: by default the predicted path (the most
probable level-1 node by the tree marginals, then its most probable child, ... as ``hrn.predict``); with a node
name, that node, its ancestors above it and, below it, its most probable descendants.
"""

from __future__ import annotations

import difflib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from hrn.atomic import atomic_write_bytes
from hrn.checkpoints import load_checkpoint
from hrn.data.augment import downsample, eval_transform
from hrn.data.base import DataError
from hrn.data.files import ImageFiles, expand_images
from hrn.deploy.inference import pick_device
from hrn.errors import HRNError
from hrn.tree import Hierarchy, TreeProbabilities, check_source

__all__ = [
    "CAMError",
    "LevelCAMs",
    "LevelLogits",
    "LAYERS",
    "level_cams",
    "load_images",
    "plot_cams",
    "save_figure",
    "gradcam",
    "node_index",
    "PANEL_INCHES",
    "DPI",
]

log = logging.getLogger(__name__)

LAYERS = ("gsb", "trunk")
PANEL_INCHES = 2.0  # each image / heatmap panel of the grid is PANEL_INCHES x PANEL_INCHES ...
DPI = 100  # ... at DPI dots per inch: a grid of R rows and C columns is (C·200) x (R·200) pixels


class CAMError(HRNError):
    """A Grad-CAM setting the package cannot use (an unknown target node, layer or scale)."""


class LevelLogits(nn.Module):
    """One level of an HRN as a plain classifier: (B, 3, H, W) -> (B, n_l) logits, as ``pytorch_grad_cam`` expects.

    Levels above the leaves give the pre-sigmoid logits of their head; the leaf level (``level == L - 1``, 0-based)
    gives the leaf softmax head's logits.
    """

    def __init__(self, net: nn.Module, level: int) -> None:
        super().__init__()
        self.net = net
        self.level = level
        self.num_levels = len(net.level_sizes)
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level {level} outside 0..{self.num_levels - 1}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images)
        return out.leaf_logits if self.level == self.num_levels - 1 else out.level_logits[self.level]


@dataclass
class LevelCAMs:
    """What :func:`level_cams` returns, coarse -> fine.

    Attributes:
        cams: per level, (B, H, W) float32 heatmaps in [0, 1], the size of the input images.
        nodes: per level, the name of the node explained in each image.
        probs: per level, (B,) the tree-marginal probability of that node.
    """

    cams: list[np.ndarray]
    nodes: list[list[str]]
    probs: list[np.ndarray]

    @property
    def num_levels(self) -> int:
        return len(self.cams)

    def __len__(self) -> int:
        return len(self.cams[0]) if self.cams else 0

    @staticmethod
    def concat(parts: Sequence[LevelCAMs]) -> LevelCAMs:
        """Join the results of consecutive batches."""
        levels = range(parts[0].num_levels)
        return LevelCAMs(
            cams=[np.concatenate([p.cams[lvl] for p in parts]) for lvl in levels],
            nodes=[[n for p in parts for n in p.nodes[lvl]] for lvl in levels],
            probs=[np.concatenate([p.probs[lvl] for p in parts]) for lvl in levels],
        )


def node_index(h: Hierarchy, name: str) -> int:
    """The index of node ``name``; one line with close matches for a name the tree does not have."""
    if name not in h:
        close = difflib.get_close_matches(name, h.names, n=3)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"e.g. {h.names[0]!r}"
        raise CAMError(
            f"target={name!r}: not a node of the tree; use target=predicted or a node name ({hint})"
        )
    return h.index(name)


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def level_cams(
    net: nn.Module,
    images: torch.Tensor,
    hierarchy: Hierarchy,
    targets: str | Sequence[str] = "predicted",
    layer: str = "gsb",
    tree_scores: str = "sigmoid",
    batch_size: int | None = None,
    calibration: dict | None = None,
    probabilities: str = "tree",
) -> LevelCAMs:
    """Grad-CAM heatmaps of every level of ``net`` for a batch of images.

    Args:
        net: an :class:`hrn.nets.HRN` (or a compared network of :mod:`hrn.nets`); it is put in eval mode and
            its parameter gradients are cleared afterwards.
        images: (B, 3, H, W) transformed images (the test transform of the checkpoint).
        hierarchy: the network's tree.
        targets: ``"predicted"``, a node name of any level, or one of those per image.
        layer: ``"gsb"`` (each level's granularity-specific block) or ``"trunk"`` (the trunk's last block).
        tree_scores: what the node probabilities come from, one of :data:`hrn.tree.TREE_SCORES` (the
            checkpoint's ``hrn.load_checkpoint(...).tree_scores``).
        batch_size: images per Grad-CAM pass (all at once by default).
        calibration: the checkpoint's temperatures (``hrn.load_checkpoint(...).calibration``), for the
            probabilities in the titles; None: none.
        probabilities: the node probabilities whose path is explained and titled (:data:`hrn.tree.SOURCES`;
            ``hrn.gradcam`` and the demo pass ``"leaf"``, as ``hrn.predict``).

    Returns:
        a :class:`LevelCAMs`: per level, (B, H, W) heatmaps in [0, 1], the explained node names and their
        tree-marginal probabilities.
    """
    if layer not in LAYERS:
        raise CAMError(f"layer={layer!r}: expected one of {', '.join(LAYERS)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise CAMError(f"images: expected a (B, 3, H, W) tensor, got shape {tuple(images.shape)}")
    b = images.shape[0]
    wanted = [targets] * b if isinstance(targets, str) else [str(t) for t in targets]
    if len(wanted) != b:
        raise CAMError(f"targets: {len(wanted)} given for {b} images")
    nodes = [-1 if t == "predicted" else node_index(hierarchy, t) for t in wanted]
    if batch_size is not None and batch_size < b:
        if batch_size < 1:
            raise CAMError(f"batch_size={batch_size}: must be at least 1")
        return LevelCAMs.concat(
            [
                level_cams(
                    net,
                    images[i : i + batch_size],
                    hierarchy,
                    wanted[i : i + batch_size],
                    layer,
                    tree_scores,
                    calibration=calibration,
                    probabilities=probabilities,
                )
                for i in range(0, b, batch_size)
            ]
        )

    net.eval()
    images = images.to(_device(net))
    source = check_source(probabilities)
    tree = TreeProbabilities.calibrated(hierarchy, calibration).to(images.device)
    with torch.no_grad():
        marginals = tree.node_probabilities(net(images), tree_scores, source).float()  # (B, N)
        through = torch.tensor(nodes, device=images.device)
        paths = tree.top_down_path(marginals, through).cpu()  # (B, L)
    marginals = marginals.cpu()
    off = hierarchy.offsets
    layers = net.feature_layers(layer)
    if layer == "gsb" and getattr(net, "gsbs", None) is None:
        log.info("the network has no GSBs; Grad-CAM looks at the trunk's last block for every level")

    cams, names, probs = [], [], []
    # The input asks for its gradient so that every activation does, even when the weights are frozen.
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        for lvl in range(hierarchy.num_levels):
            classes = [ClassifierOutputTarget(int(v) - off[lvl]) for v in paths[:, lvl]]
            target, reshape = layers[lvl]
            cam = GradCAM(model=LevelLogits(net, lvl), target_layers=[target], reshape_transform=reshape)
            try:  # not ``with``: its __exit__ would swallow an IndexError
                heat = cam(input_tensor=inputs, targets=classes)
            finally:
                cam.activations_and_grads.release()
            cams.append(np.nan_to_num(heat).astype(np.float32))
            names.append([hierarchy.names[int(v)] for v in paths[:, lvl]])
            probs.append(marginals.gather(1, paths[:, lvl : lvl + 1]).flatten().numpy())
    net.zero_grad(set_to_none=True)
    return LevelCAMs(cams=cams, nodes=names, probs=probs)


def load_images(paths: Sequence[str | Path], resize: int, crop: int, scale: float = 1.0) -> torch.Tensor:
    """Image files -> (B, 3, crop, crop) through the test transform; ``scale < 1`` first downsamples them
    (bilinear, the paper's low-resolution protocol), so the network sees what the coarse levels still can."""
    if not 0 < scale <= 1:
        raise CAMError(f"scale={scale}: must be in (0, 1]")
    transform = eval_transform(resize, crop)
    load = ImageFiles([Path(p) for p in paths])
    out = []
    for i in range(len(load.paths)):
        image = load(i)
        out.append(transform(downsample(image, scale) if scale < 1 else image))
    if not out:
        raise DataError("images=[]: give at least one image, a folder or a glob")
    return torch.stack(out)


def _show(image: torch.Tensor) -> np.ndarray:
    """A transformed (3, H, W) image (Normalize 0.5 / 0.5) -> (H, W, 3) floats in [0, 1] for display."""
    return (image.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_cams(
    images: torch.Tensor, result: LevelCAMs, labels: Sequence[str] | None = None, alpha: float = 0.5
) -> Figure:
    """The grid: a row per image, the input then each level's heatmap over it, titled ``L<l> <node> <prob>``.

    A grid of R images and L levels is ``(L + 1)·PANEL_INCHES x R·PANEL_INCHES`` inches at ``DPI``; the figure is
    a bare :class:`matplotlib.figure.Figure` (Agg, no pyplot state).
    """
    rows, cols = len(result), result.num_levels + 1
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.16 / rows, wspace=0.05, hspace=0.22)
    for r in range(rows):
        shown = _show(images[r])
        axes[r][0].imshow(shown)
        axes[r][0].set_title(labels[r] if labels else f"image {r}", fontsize=7)
        for lvl in range(result.num_levels):
            ax = axes[r][lvl + 1]
            ax.imshow(shown)
            ax.imshow(result.cams[lvl][r], cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
            name, prob = result.nodes[lvl][r], float(result.probs[lvl][r])
            ax.set_title(f"L{lvl + 1} {name}\np = {prob:.3f}", fontsize=7)
        for ax in axes[r]:
            ax.set_axis_off()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a temporary file in the same folder, then a rename)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def gradcam(
    ckpt_path: str | Path,
    images,
    out: str | Path = "cams.png",
    target: str = "predicted",
    layer: str = "gsb",
    scale: float = 1.0,
    batch_size: int = 16,
    device: str = "auto",
    trust: bool = False,
    probabilities: str = "leaf",
) -> tuple[Path, LevelCAMs]:
    """Load a checkpoint (or shared folder) and images (a list, a folder or a glob), compute every level's
    Grad-CAM and write the grid to ``out``. Returns the PNG's path and the heatmaps. ``trust``: as
    :func:`hrn.checkpoints.read_checkpoint`; ``probabilities``: whose path is explained (as ``hrn.predict``)."""
    check_source(probabilities)
    if layer not in LAYERS:
        raise CAMError(f"layer={layer!r}: expected one of {', '.join(LAYERS)}")
    if batch_size < 1:
        raise CAMError(f"batch_size={batch_size}: must be at least 1")
    if not 0 < scale <= 1:
        raise CAMError(f"scale={scale}: must be in (0, 1]")
    model = load_checkpoint(ckpt_path, trust)
    h = model.hierarchy
    if target != "predicted":
        node_index(h, target)  # an unknown name fails before any work
    paths = expand_images(images)
    batch = load_images(paths, model.resize, model.crop, scale)
    net = model.net.to(pick_device(device))
    result = level_cams(
        net, batch, h, target, layer, model.tree_scores, batch_size, model.calibration, probabilities
    )
    fig = plot_cams(batch, result, [p.name for p in paths])
    written = save_figure(fig, out)
    log.info("Grad-CAM of %d image(s) x %d level(s) written to %s", len(paths), h.num_levels, written)
    return written, result
