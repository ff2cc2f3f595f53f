"""Losses over a label tree: the paper's tree (marginal probability) loss and the composite HRN loss.

Shapes: B = batch, N = nodes of the tree, n_l = nodes of level l, L = levels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hrn.hierarchy import Hierarchy

__all__ = ["TreeLoss", "CompositeLoss", "LeafCELoss", "PerLevelCELoss", "CoarseConstraintLoss", "LossTerms"]


class LossTerms(NamedTuple):
    """What a loss returns: the total to optimise and each named term (already weighted), all scalars."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def _group_logsumexp(
    x: torch.Tensor, group: torch.Tensor, num_groups: int, init: torch.Tensor
) -> torch.Tensor:
    """``logsumexp`` of ``init[:, g]`` together with every ``x[:, j]`` whose ``group[j] == g``.

    Args:
        x: (B, n) values of the children.
        group: (n,) long, the parent (0..num_groups-1) of each child.
        num_groups: number of parents G.
        init: (B, G) one value per parent that joins its group.
    Returns:
        (B, G).
    """
    idx = group.expand_as(x)
    # The shift only keeps exp() in range; it cancels exactly, so it needs no gradient.
    with torch.no_grad():
        shift = init.scatter_reduce(1, idx, x, reduce="amax", include_self=True)
    total = torch.exp(init - shift).scatter_add(1, idx, torch.exp(x - shift.gather(1, idx)))
    return shift + torch.log(total)


class TreeLoss(nn.Module):
    """Hierarchical probabilistic (tree) loss of HRN (Chen et al., CVPR 2022, Eq. 3-5).

    The legal states of the tree are the empty state and, for every node v, ``{v} ∪ ancestors(v)``: N + 1 states.
    With the concatenated per-level scores s (B, N), a state's score is the sum of s over its nodes,
    ``P(state) = exp(score) / Z`` and the marginal ``P(v)`` sums P over the states of v's subtree. A sample labelled
    at node v (any level) costs ``-log P(v)``.

    Computed exactly in O(N) per sample without the (N+1) x N state matrix: path scores ``c_v = s_v + c_parent(v)``
    top-down; subtree log-sums ``A_v = logsumexp(c_v, A_children(v))`` bottom-up, level by level;
    ``log Z = logsumexp(0, A over level 1)`` (0 = the empty state); ``log P(v) = A_v - log Z``. All in log space,
    so raw logits of any magnitude are safe.
    """

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.level_sizes = hierarchy.level_sizes
        for i, parents in enumerate(hierarchy.level_parents, start=2):
            self.register_buffer(f"parents_l{i}", parents, persistent=False)

    def _parents(self, level: int) -> torch.Tensor:
        """(n_level,) local index of each node's parent in level - 1 (level >= 2)."""
        return getattr(self, f"parents_l{level}")

    def _check(self, scores: torch.Tensor) -> None:
        if scores.dim() != 2 or scores.shape[1] != sum(self.level_sizes):
            raise ValueError(
                f"TreeLoss expects scores of shape (B, {sum(self.level_sizes)}), got {tuple(scores.shape)}"
            )

    def _path_scores(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """(B, N) scores -> per level, (B, n_l) path scores ``c_v = s_v + c_parent(v)`` (a state's score)."""
        self._check(scores)
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()  # log-sum-exp over many nodes needs fp32 even under mixed precision
        per_level = list(torch.split(scores, self.level_sizes, dim=1))
        paths = [per_level[0]]
        for lvl in range(2, len(per_level) + 1):
            paths.append(per_level[lvl - 1] + paths[-1][:, self._parents(lvl)])
        return paths

    def log_marginals(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, N) scores -> (B, N) ``log P(v)`` for every node."""
        paths = self._path_scores(scores)  # c_v per level
        subtree = [paths[-1]]  # A_v, filled from the leaves up
        for lvl in range(len(paths) - 1, 0, -1):
            subtree.insert(
                0,
                _group_logsumexp(
                    subtree[0], self._parents(lvl + 1), self.level_sizes[lvl - 1], paths[lvl - 1]
                ),
            )
        top = subtree[0]
        log_z = torch.logsumexp(torch.cat([top.new_zeros(top.shape[0], 1), top], dim=1), dim=1, keepdim=True)
        return torch.cat(subtree, dim=1) - log_z

    def marginals(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, N) scores -> (B, N) marginal probabilities ``P(v)``; inside a level they sum to at most 1."""
        return self.log_marginals(scores).exp()

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean of ``-log P(target)`` over the batch.

        Args:
            scores: (B, N) concatenated per-level scores (sigmoid outputs in the paper, or raw logits).
            targets: (B,) long node indices, at any level.
        """
        return -self.log_marginals(scores).gather(1, targets.view(-1, 1)).mean()


class CompositeLoss(nn.Module):
    """The HRN objective: ``L = L_tree + λ · CE(leaf logits, leaf label)`` (Chen et al., CVPR 2022, Eq. 6).

    The cross-entropy is averaged over the leaf-labelled samples of the batch only (zero when there are none):
    a sample relabelled to a coarser node has no leaf label to learn from.

    Args:
        hierarchy: the label tree.
        leaf_weight: λ (1 in the paper).
        tree_scores: ``"sigmoid"`` feeds the per-level sigmoid outputs to the tree loss, as the authors do;
            ``"logits"`` feeds the raw pre-sigmoid logits (an ablation).
    """

    def __init__(self, hierarchy: Hierarchy, leaf_weight: float = 1.0, tree_scores: str = "sigmoid") -> None:
        super().__init__()
        if tree_scores not in ("sigmoid", "logits"):
            raise ValueError(f"tree_scores must be 'sigmoid' or 'logits', got {tree_scores!r}")
        self.tree = TreeLoss(hierarchy)
        self.leaf_weight = leaf_weight
        self.tree_scores = tree_scores
        self.leaf_offset = hierarchy.offsets[-2]

    def forward(self, output, targets: torch.Tensor) -> LossTerms:
        """``output``: an :class:`hrn.model.HRNOutput`; ``targets``: (B,) node indices at any level."""
        scores = output.scores(self.tree_scores)  # (B, N)
        tree = self.tree(scores, targets)
        ce = self.leaf_weight * _leaf_ce(output.leaf_logits, targets, self.leaf_offset)
        return LossTerms(tree + ce, {"tree": tree, "leaf_ce": ce})


def _leaf_ce(leaf_logits: torch.Tensor, targets: torch.Tensor, leaf_offset: int) -> torch.Tensor:
    """Cross-entropy of the leaf head over the leaf-labelled samples. With none, a zero that stays connected to the
    graph, so every parameter still gets a (zero) gradient and DDP's gradient buckets stay complete."""
    is_leaf = targets >= leaf_offset
    if is_leaf.any():
        return F.cross_entropy(leaf_logits[is_leaf].float(), targets[is_leaf] - leaf_offset)
    return leaf_logits.sum() * 0.0


class LeafCELoss(nn.Module):
    """Comparison loss: cross-entropy of the leaf softmax head only; coarse-labelled samples are dropped.

    Nothing trains the per-level sigmoid heads, so coarse-level predictions come from the leaf prediction's
    ancestors (``coarse_from_leaf``), which is how a flat leaf classifier answers coarse questions.
    """

    coarse_from_leaf = True

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.leaf_offset = hierarchy.offsets[-2]

    def forward(self, output, targets: torch.Tensor) -> LossTerms:
        ce = _leaf_ce(output.leaf_logits, targets, self.leaf_offset)
        return LossTerms(ce, {"leaf_ce": ce})


class PerLevelCELoss(nn.Module):
    """Comparison loss, the "traditional hierarchical loss": a cross-entropy at every level at or above the
    sample's label level, ``sum_l mean_{samples known at l} CE(logits_l, y_l)``; the per-level logits at levels < L
    and the leaf softmax head at level L."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__()
        self.register_buffer("ancestor_at_level", hierarchy.ancestor_at_level, persistent=False)  # (L, N)

    def forward(self, output, targets: torch.Tensor) -> LossTerms:
        truth = self.ancestor_at_level[:, targets]  # (L, B), -1 above the label's level
        logits = [*output.logits[:-1], output.leaf_logits]
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

    Coarse-level predictions come from the leaf prediction's ancestors (``coarse_from_leaf``).
    """

    coarse_from_leaf = True

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
        ce = self.a * _leaf_ce(output.leaf_logits, targets, self.leaf_offset)
        bce = self.b * F.binary_cross_entropy_with_logits(
            output.leaf_logits.float(), self.constraint[targets]
        )
        return LossTerms(ce + bce, {"leaf_ce": ce, "constraint_bce": bce})
