"""What every network of the package returns: per level, its heads' probabilities and logits, and the leaf softmax
logits.

Shapes: B = batch, N = nodes of the tree, n_l = classes of level l.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hrn.errors import HRNError

__all__ = ["BaselineOutput", "HRNOutput", "LeafScoresError"]


class LeafScoresError(HRNError):
    """``scores("leaf")``: the leaf softmax is no per-node score of the tree distribution."""


@dataclass
class HRNOutput:
    """What :class:`hrn.nets.HRN` (and every compared network) returns.

    Attributes:
        level_probs: per level, coarse -> fine, (B, n_l) probabilities in (0, 1) of the level's head: HRN's sigmoid
            outputs ``s_l`` (the paper's tree scores), C-HMCNN's constrained sigmoids, HMCN-F's node probabilities,
            Chang et al.'s per-level softmax.
        level_logits: per level, the (B, n_l) logits behind them (the raw-logit tree-loss ablation; the losses of
            the compared methods).
        leaf_logits: (B, n_L) logits of the leaf softmax branch.
    """

    level_probs: list[torch.Tensor]
    level_logits: list[torch.Tensor]
    leaf_logits: torch.Tensor

    def scores(self, tree_scores: str = "sigmoid") -> torch.Tensor:
        """(B, N) concatenation, coarse -> fine, of the heads' probabilities (``tree_scores="sigmoid"``) or of their
        logits (``"logits"``): the scores of the tree distribution (:class:`hrn.tree.TreeProbabilities`).

        ``"leaf"`` is refused: a leaf-only method's node probabilities are its leaf softmax summed up the tree, not
        a score per node (:meth:`hrn.tree.TreeProbabilities.node_probabilities` with ``"leaf"``)."""
        if tree_scores == "sigmoid":
            return torch.cat(self.level_probs, dim=1)
        if tree_scores == "logits":
            return torch.cat(self.level_logits, dim=1)
        raise LeafScoresError(
            f"scores({tree_scores!r}): tree scores are 'sigmoid' or 'logits'; the node probabilities of "
            "tree_scores='leaf' come from TreeProbabilities.node_probabilities(output, 'leaf')"
        )


@dataclass
class BaselineOutput(HRNOutput):
    """:class:`HRNOutput` plus ``extras``: named raw tensors that only the method's own loss reads."""

    extras: dict[str, torch.Tensor] = field(default_factory=dict)
