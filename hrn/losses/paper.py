"""The paper's objective and the losses it is compared with on the HRN network (design §3).

Shapes: B = batch, N = nodes of the tree, n_l = nodes of level l, L = levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrn.losses.base import LossError, LossTerms, leaf_ce
from hrn.losses.tree import Formulation, TreeLoss
from hrn.tree import Hierarchy, TreeScores

__all__ = ["CoarseConstraintLoss", "CompositeLoss", "LeafCELoss", "PerLevelCELoss"]


class CompositeLoss(nn.Module):
    """The HRN objective: ``L = L_tree + λ · CE(leaf logits, leaf label)`` (Chen et al., CVPR 2022, Eq. 6).

    The cross-entropy is averaged over the leaf-labelled samples of the batch only (zero when there are none):
    a sample relabelled to a coarser node has no leaf label to learn from.

    Args:
        hierarchy: the label tree.
        leaf_weight: λ (1 in the paper).
        tree_scores: ``"sigmoid"`` feeds the per-level sigmoid outputs to the tree loss, as the authors do;
            ``"logits"`` feeds the raw pre-sigmoid logits (an ablation). The node probabilities come from the same.
        formulation: how the tree loss is computed (:class:`TreeLoss`); the value is the same.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        leaf_weight: float = 1.0,
        tree_scores: TreeScores = "sigmoid",
        formulation: Formulation = "auto",
    ) -> None:
        super().__init__()
        if tree_scores not in ("sigmoid", "logits"):
            raise LossError(
                f"tree_scores must be 'sigmoid' or 'logits', got {tree_scores!r} (config key loss.tree_scores)"
            )
        self.tree = TreeLoss(hierarchy, formulation)
        self.leaf_weight = leaf_weight
        self.tree_scores = tree_scores
        self.leaf_offset = hierarchy.offsets[-2]

    def forward(self, output, targets: torch.Tensor) -> LossTerms:
        """``output``: an :class:`hrn.nets.HRNOutput`; ``targets``: (B,) node indices at any level."""
        scores = output.scores(self.tree_scores)  # (B, N)
        tree = self.tree(scores, targets)
        ce = self.leaf_weight * leaf_ce(output.leaf_logits, targets, self.leaf_offset)
        return LossTerms(tree + ce, {"tree": tree, "leaf_ce": ce})


class LeafCELoss(nn.Module):
    """Comparison loss: cross-entropy of the leaf softmax head only; coarse-labelled samples are dropped.

    Nothing trains the per-level sigmoid heads, so node probabilities and coarse-level predictions come from the
    leaf softmax (``tree_scores = "leaf"``): the leaf prediction's ancestors, which is how a flat leaf classifier
    answers coarse questions.
    """

    tree_scores: TreeScores = "leaf"

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.leaf_offset = hierarchy.offsets[-2]

    def forward(self, output, targets: torch.Tensor) -> LossTerms:
        ce = leaf_ce(output.leaf_logits, targets, self.leaf_offset)
        return LossTerms(ce, {"leaf_ce": ce})


class PerLevelCELoss(nn.Module):
    """Comparison loss, the "traditional hierarchical loss": a cross-entropy at every level at or above the
    sample's label level, ``sum_l mean_{samples known at l} CE(logits_l, y_l)``; the per-level logits at levels < L
    and the leaf softmax head at level L."""

    tree_scores: TreeScores = "sigmoid"

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.register_buffer("ancestor_at_level", hierarchy.ancestor_at_level, persistent=False)  # (L, N)

    def forward(self, output, targets: torch.Tensor) -> LossTerms:
        truth = self.ancestor_at_level[:, targets]  # (L, B), -1 above the label's level
        logits = [*output.level_logits[:-1], output.leaf_logits]
        terms = {}
        for lvl, z in enumerate(logits, start=1):
            known = truth[lvl - 1] >= 0
            terms[f"ce_l{lvl}"] = (
                F.cross_entropy(z[known].float(), truth[lvl - 1, known]) if known.any() else z.sum() * 0.0
            )
        return LossTerms(sum(terms.values()), terms)


class CoarseConstraintLoss(nn.Module):
    """Comparison loss from "Fine-grained classification based on coarse label constraints":
    ``a · CE(leaf logits, leaf) + b · BCEWithLogits(leaf logits, m)``, where m (B, n_L) is the multi-hot vector of
    the leaves under the sample's parent-level label (for a coarse-labelled sample, under its own label). The CE
    counts leaf-labelled samples only; the BCE counts every sample, so coarse labels constrain the leaf logits.

    Node probabilities and coarse-level predictions come from the leaf softmax (``tree_scores = "leaf"``).
    """

    tree_scores: TreeScores = "leaf"

    def __init__(self, hierarchy: Hierarchy, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.leaf_offset = hierarchy.offsets[-2]
        # constraint[v] = leaves under v's parent-level node (v's parent for a leaf, v itself for coarser nodes)
        lo = hierarchy.offsets[-2]
        under = hierarchy.ancestors[lo:].T.clone()  # (N, n_L): leaf j lies under node v
        under[lo:] = under[hierarchy.parent[lo:]]
        self.register_buffer("constraint", under.float(), persistent=False)

    def forward(self, output, targets: torch.Tensor) -> LossTerms:
        ce = self.a * leaf_ce(output.leaf_logits, targets, self.leaf_offset)
        bce = self.b * F.binary_cross_entropy_with_logits(
            output.leaf_logits.float(), self.constraint[targets]
        )
        return LossTerms(ce + bce, {"leaf_ce": ce, "constraint_bce": bce})
