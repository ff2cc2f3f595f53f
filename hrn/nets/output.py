"""What every network of the package returns: per-level sigmoid outputs and logits, and the leaf softmax logits.

Shapes: B = batch, N = nodes of the tree, n_l = classes of level l.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["BaselineOutput", "HRNOutput"]


@dataclass
class HRNOutput:
    """What :class:`hrn.nets.HRN` returns.

    Attributes:
        sigmoid: per level, coarse -> fine, (B, n_l) sigmoid outputs ``s_l``.
        logits: per level, the (B, n_l) pre-sigmoid logits (for the raw-logit tree-loss ablation).
        leaf_logits: (B, n_L) logits of the leaf softmax branch.
    """

    sigmoid: list[torch.Tensor]
    logits: list[torch.Tensor]
    leaf_logits: torch.Tensor

    def scores(self, tree_scores: str = "sigmoid") -> torch.Tensor:
        """(B, N) concatenation, coarse -> fine, of the sigmoid outputs (``tree_scores="sigmoid"``) or of the raw
        logits (``"logits"``): the scores of the tree distribution (:class:`hrn.tree.TreeProbabilities`)."""
        return torch.cat(self.sigmoid if tree_scores == "sigmoid" else self.logits, dim=1)


@dataclass
class BaselineOutput(HRNOutput):
    """:class:`HRNOutput` plus ``extras``: named raw tensors that only the method's own loss reads."""

    extras: dict[str, torch.Tensor] = field(default_factory=dict)
