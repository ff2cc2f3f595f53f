"""What every loss of the package shares: the value it returns, its one error type, the contract the
LightningModule relies on, and the tree targets (index buffers) the losses build their targets from.

Shapes: B = batch, N = nodes of the tree, L = levels, n_l = nodes of level l.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from hrn.errors import HRNError
from hrn.tree import Hierarchy, TreeScores

__all__ = ["HierarchicalLoss", "LossError", "LossTerms", "TreeTargets", "leaf_ce", "masked_mean"]


class LossError(HRNError):
    """A loss setting the package cannot use; one line that names it and the accepted values."""


class LossTerms(NamedTuple):
    """What a loss returns: the total to optimise and each named term (already weighted), all scalars."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


@runtime_checkable
class HierarchicalLoss(Protocol):
    """The contract between :class:`hrn.training.HRNModule` and a loss.

    ``loss(output, targets) -> LossTerms``: ``output`` is the network's (an :class:`hrn.nets.HRNOutput`),
    ``targets`` (B,) node indices at any level.

    ``tree_scores`` (one of :data:`hrn.tree.TREE_SCORES`): what the node probabilities of a network trained with
    this loss come from (marginal predictions, AP, ``hrn.predict``'s path, Grad-CAM, exports). ``"leaf"`` is for
    losses that train only the leaf head (its coarse-level predictions are then the leaf prediction's
    ancestors): nothing trains their per-level sigmoid heads.
    """

    tree_scores: TreeScores

    def __call__(self, output, targets: torch.Tensor) -> LossTerms: ...


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the true entries of ``mask`` (same shape); 0 (graph kept) when there are none."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def leaf_ce(leaf_logits: torch.Tensor, targets: torch.Tensor, leaf_offset: int) -> torch.Tensor:
    """Cross-entropy of the leaf head over the leaf-labelled samples. With none, a zero that stays connected to the
    graph, so every parameter still gets a (zero) gradient and DDP's gradient buckets stay complete."""
    is_leaf = targets >= leaf_offset
    if is_leaf.any():
        return F.cross_entropy(leaf_logits[is_leaf].float(), targets[is_leaf] - leaf_offset)
    return leaf_logits.sum() * 0.0


class TreeTargets(nn.Module):
    """Base of the losses that build targets from the tree's index tensors, kept as buffers (no graph walks in
    ``forward``): the label and its ancestors, the label's descendants, its class at each level."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.level_sizes = hierarchy.level_sizes
        # (N, N) bool: ancestors[v, u] = u is v or an ancestor of v; row t = the positive nodes of label t.
        self.register_buffer("ancestors", hierarchy.ancestors, persistent=False)
        # (N, N) bool: descendants[u, d] = d is u or below u.
        self.register_buffer("descendants", hierarchy.ancestors.T.contiguous(), persistent=False)
        # (L, N) long: label -> its class at level l, -1 when the label is coarser than l.
        self.register_buffer("ancestor_at_level", hierarchy.ancestor_at_level, persistent=False)

    def positives(self, targets: torch.Tensor) -> torch.Tensor:
        """(B,) labels -> (B, N) bool: the label and its ancestors (the label set of hierarchical multi-label)."""
        return self.ancestors[targets]

    def unknown(self, targets: torch.Tensor) -> torch.Tensor:
        """(B,) labels -> (B, N) bool: the strict descendants of each label (all false for a leaf label)."""
        below = self.descendants[targets]  # (B, N), the label included
        return below & ~F.one_hot(targets, below.shape[1]).bool()
