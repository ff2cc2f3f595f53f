"""A trained network and its label tree as one module that traces and exports (TorchScript, ONNX).

``Predictor(images) -> (marginals, path, leaf_probs, node)``: what ``hrn.predict`` computes for a batch, as tensors:

    images ─ net ─ scores (B, N) ─ tree marginals ─ marginals (B, N) ─ top-down walk ─ path (B, L)
                 │                                                                   └ threshold ─ node (B,)
                 └ leaf logits (B, n_L) ─ softmax ─ leaf_probs (B, n_L)

No Lightning, no Hydra: :mod:`hrn.deploy.formats` builds it from a checkpoint and writes the files.

Shapes: B = batch, N = nodes of the tree, L = levels, n_l = nodes of level l.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from hrn.tree import Hierarchy, TreeProbabilities, check_source, check_tree_scores

__all__ = ["Predictor", "INPUT_NAME", "OUTPUT_NAMES"]

INPUT_NAME = "images"
OUTPUT_NAMES = ("marginals", "path", "leaf_probs", "node")


class Predictor(nn.Module):
    """A trained network + its tree: images -> per-node marginals, a root-to-leaf path, leaf softmax, the node
    predicted at the threshold.

    ``forward`` is tensor ops only (no loop over the batch, no branch on values), so ``torch.jit.trace`` and
    ``torch.onnx.export`` record it once for any batch size. The probabilities and the path are
    :class:`hrn.tree.TreeProbabilities`'.

    Args:
        net: a network returning :class:`hrn.nets.HRNOutput` (HRN or a compared method of :mod:`hrn.nets`).
        hierarchy: the label tree the network was trained on.
        tree_scores: what the node probabilities come from, as in training: ``"sigmoid"`` (the paper),
            ``"logits"`` (the raw-logit ablation) or ``"leaf"`` (the leaf softmax summed up the tree, for methods
            that train only the leaf head); the checkpoint says which (``hrn.load_checkpoint(...).tree_scores``).
        uint8_input: take uint8 pixels (B, 3, crop, crop) in 0..255, already resized and centre-cropped, and
            scale and normalise them here, exactly as the test transform does; otherwise take the transform's
            float output.
        mean, std: the per-channel normalisation of the test transform (``hrn.data.augment``), for ``uint8_input``.
        threshold: the marginal the predicted ``node`` must reach (the deepest of the path that does; 0: the leaf).
        calibration: the model's temperatures (``hrn.load_checkpoint(...).calibration``), or None.
        probabilities: which node probabilities (:data:`hrn.tree.SOURCES`): ``"tree"``, the tree marginals of the
            tree scores; ``"leaf"``, the leaf softmax summed up the tree (``hrn.export``'s and ``hrn.predict``'s
            default); ``"mix"``, their mean.
    """

    def __init__(
        self,
        net: nn.Module,
        hierarchy: Hierarchy,
        tree_scores: str = "sigmoid",
        uint8_input: bool = False,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        threshold: float = 0.0,
        calibration: Mapping | None = None,
        probabilities: str = "tree",
    ) -> None:
        super().__init__()
        self.source = check_source(probabilities)
        self.net = net
        # the package's own marginals and path: their scatter ops export (ONNX opset >= 18) and run in onnxruntime
        self.probabilities = TreeProbabilities.calibrated(hierarchy, calibration)
        self.threshold = threshold
        self.tree_scores = check_tree_scores(tree_scores)
        self.uint8_input = uint8_input
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, crop, crop) images -> marginals (B, N) float32, path (B, L) int64, leaf_probs (B, n_L) float32,
        node (B,) int64 (the node predicted at the threshold, -1 for none).

        ``images``: the test transform's output (Resize(resize, resize) -> CenterCrop(crop) -> [0, 1] ->
        Normalize(mean, std)), or with ``uint8_input`` the uint8 pixels before the last two steps.
        """
        if self.uint8_input:  # the same ops as torchvision's ToDtype(scale=True) then Normalize: equal bits
            images = images.to(torch.float32).mul(1.0 / 255).sub(self.mean).div(self.std)
        output = self.net(images)
        marginals = self.probabilities.node_probabilities(output, self.tree_scores, self.source)
        path = self.probabilities.top_down_path(marginals)
        node, _ = self.probabilities.confident_node(marginals, self.threshold, path)
        return marginals, path, self.probabilities.leaf_probabilities(output.leaf_logits), node
