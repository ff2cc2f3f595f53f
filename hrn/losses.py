"""Losses over a label tree: the paper's tree (marginal probability) loss and the composite HRN loss.

Shapes: B = batch, N = nodes of the tree, n_l = nodes of level l, L = levels.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from hrn.errors import HRNError
from hrn.hierarchy import Hierarchy

__all__ = [
    "TreeLoss",
    "CompositeLoss",
    "LeafCELoss",
    "PerLevelCELoss",
    "CoarseConstraintLoss",
    "LossTerms",
    "LossError",
    "Formulation",
    "DENSE_MAX_NODES",
    "SCORE_SOURCES",
]

Formulation = Literal["auto", "subtree", "dense"]

SCORE_SOURCES = ("sigmoid", "logits", "leaf")
"""What a network's node probabilities come from (:meth:`TreeLoss.node_probabilities`): the tree marginals of the
per-level sigmoid outputs (the paper) or of the raw logits (an ablation), or the leaf softmax summed up the tree
(methods that train only the leaf head)."""

# "auto" takes the dense formulation on CUDA up to this many nodes. On a GPU both formulations are bound by kernel
# launches at these sizes and the dense one launches fewer (on one H100, the (N+1) x N matmul variant of a dense
# formulation beat the subtree kernel at every size measured, up to 10,000 nodes); larger trees are not measured on
# a GPU yet, so auto keeps the subtree kernel there, which keeps 2.3x less for the backward (24 against 56 MB at
# 100,000 nodes, batch 64). Calibrate with `python -m hrn.bench --device cuda`.
DENSE_MAX_NODES = 10_000


class LossError(HRNError):
    """A loss setting the package cannot use; one line that names it and the accepted values."""


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
    # The shift only keeps exp() in range; it cancels exactly, so it needs no gradient.
    with torch.no_grad():
        shift = init.scatter_reduce(1, group.expand_as(x), x, reduce="amax", include_self=True)
    # index_add over a dimension, unlike a 2-D scatter_add, has a deterministic CUDA implementation
    total = torch.exp(init - shift).index_add(1, group, torch.exp(x - shift.index_select(1, group)))
    return shift + torch.log(total)


def _state_scores(scores: torch.Tensor, level_sizes: list[int], parents: list[torch.Tensor]) -> torch.Tensor:
    """(B, N) node scores -> (B, N) state scores ``c_v = s_v + c_parent(v)``: the score of the state
    ``{v} ∪ ancestors(v)``, built top-down one level at a time (``parents[l]``: (n_{l+2},) local parent indices)."""
    c = torch.empty_like(scores)
    s_levels, c_levels = scores.split(level_sizes, 1), c.split(level_sizes, 1)
    c_levels[0].copy_(s_levels[0])
    for lvl in range(1, len(level_sizes)):
        # index_select, not c[:, idx]: on CPU it is ~4x faster forward and its backward avoids index_put_
        torch.add(s_levels[lvl], c_levels[lvl - 1].index_select(1, parents[lvl - 1]), out=c_levels[lvl])
    return c


def _inside(state_ancestor: torch.Tensor, node_level: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, S) bool: state u lies in the subtree of the sample's target, i.e. u's ancestor at the target's level is
    the target. ``state_ancestor`` (L, S): each state's ancestor (global index) at each level, -1 where it has
    none; ``node_level`` (N,): 0-based level of each node; ``targets`` (B,) long."""
    ancestor = state_ancestor.index_select(0, node_level.index_select(0, targets))
    return ancestor == targets.unsqueeze(1).to(ancestor.dtype)


def _dense_nll(
    scores: torch.Tensor,
    targets: torch.Tensor,
    state_nodes: torch.Tensor,
    state_ancestor: torch.Tensor,
    node_level: torch.Tensor,
) -> torch.Tensor:
    """Mean over the batch of ``-log P(target)`` from all N + 1 state log-probabilities, through autograd.

    Args:
        scores: (B, N).
        targets: (B,) long.
        state_nodes: ((N+1) * L,) the nodes of each state, one per level, as 1 + node index; 0 = no node at that
            level (it picks the zero column prepended to the scores). State 0 is the empty state.
        state_ancestor: (L, N+1) see :func:`_inside`.
        node_level: (N,).

    State scores are gathered and summed (exact in fp32, whatever the matmul precision or autocast; O(N L)),
    not multiplied by an (N+1) x N state matrix: the same values without the O(N^2) matrix or a TF32 product.
    ``log_softmax`` and the masked ``logsumexp`` work in log space, so any magnitude of scores is safe.
    """
    b, levels = scores.shape[0], state_ancestor.shape[0]
    padded = F.pad(scores, (1, 0))  # (B, N+1): column 0 scores "no node"
    c = padded.index_select(1, state_nodes).view(b, -1, levels).sum(2)  # (B, N+1): score of each state
    log_p = c.log_softmax(1)  # (B, N+1): log P(state)
    inside = _inside(state_ancestor, node_level, targets)  # (B, N+1)
    return -torch.where(inside, log_p, float("-inf")).logsumexp(1).mean()


class _TreeNLL(torch.autograd.Function):
    """Mean over the batch of ``-log P(target)``, with a hand-written backward.

    With state scores c (B, N) and the empty state scoring 0, ``Z = 1 + sum_u exp(c_u)`` and the marginal of t
    is ``M_t / Z`` with ``M_t = sum_{u in subtree(t)} exp(c_u)``: one masked sum over the N states, O(N) per
    sample. The gradient needs no graph: ``d(-log P(t))/dc_u = exp(c_u)/Z - [u in subtree(t)] exp(c_u)/M_t``,
    and since c_u sums s over u's path, ``d/ds_v`` is the sum of ``d/dc_u`` over v's subtree (bottom-up).

    Why by hand: at CUB size (251 nodes) per-op overhead, not arithmetic, dominates, and autograd would record
    every op of the forward; with the backward written out, forward + backward at batch 64 took about half the
    time of the level-by-level subtree pass through autograd on the development CPU (docs/benchmarks.md).

    Stability: states inside the target's subtree are exponentiated against their own maximum, the others
    against the overall maximum (>= 0, the empty state), so neither sum can underflow to 0 or overflow, whatever
    the magnitude of the scores.
    """

    @staticmethod
    def forward(ctx, scores, targets, level_sizes, parents, ancestor_of, target_level):
        # scores (B, N) float; targets (B,) long; ancestor_of (L, N): global index of u's ancestor at each level
        # (-1 above u's level); target_level (N,) long: 0-based level of each node.
        c = _state_scores(scores, level_sizes, parents)
        inside = _inside(ancestor_of, target_level, targets)  # (B, N)
        shift_z = c.amax(1, keepdim=True).clamp_min_(0)  # (B, 1)
        shift_m = torch.where(inside, c, float("-inf")).amax(1, keepdim=True)  # (B, 1), finite: t is inside
        gap = shift_m - shift_z  # <= 0
        e = torch.exp(c - torch.where(inside, shift_m, shift_z))  # (B, N), each state against its group's max
        m = torch.where(inside, e, 0).sum(1, keepdim=True)  # M_t exp(-shift_m) >= 1
        z = e.sum(1, keepdim=True) - m + m * gap.exp() + (-shift_z).exp()  # Z exp(-shift_z) >= 1
        log_p = shift_m + m.log() - shift_z - z.log()  # (B, 1)
        inv_z = z.reciprocal()  # exp(shift_z - log Z)
        in_factor = gap.exp() * inv_z - m.reciprocal()  # exp(shift_m - log Z) - exp(shift_m - log M_t)
        ctx.save_for_backward(e.mul_(torch.where(inside, in_factor, inv_z)))  # d(-log P(t))/dc, (B, N)
        ctx.level_sizes, ctx.parents = level_sizes, parents
        return -log_p.mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        d = d * (grad / d.shape[0])
        parts = d.split(ctx.level_sizes, 1)
        for lvl in range(len(parts) - 1, 0, -1):  # each node collects its (already summed) children
            parts[lvl - 1].index_add_(1, ctx.parents[lvl - 1], parts[lvl])
        return d, None, None, None, None, None


class TreeLoss(nn.Module):
    """Hierarchical probabilistic (tree) loss of HRN (Chen et al., CVPR 2022, Eq. 3-5).

    The legal states of the tree are the empty state and, for every node v, ``{v} ∪ ancestors(v)``: N + 1 states.
    With the concatenated per-level scores s (B, N), a state's score is the sum of s over its nodes,
    ``P(state) = exp(score) / Z`` and the marginal ``P(v)`` sums P over the states of v's subtree. A sample labelled
    at node v (any level) costs ``-log P(v)``.

    Computed exactly, never with the (N+1) x N state matrix, by one of two formulations of the same value
    (``formulation``); both work in log space, so raw logits of any magnitude are safe:

    - ``"subtree"``: O(N) time and memory per sample; one masked sum over the states for the target's marginal,
      with a hand-written backward (:class:`_TreeNLL`). Few operations per element: the fastest on a CPU.
    - ``"dense"``: all N + 1 state log-probabilities (``log_softmax``), then a masked ``logsumexp`` over the
      target's subtree, through autograd (:func:`_dense_nll`); O(N L). Fewer, larger kernels: faster where each
      kernel launch costs more than its arithmetic, as on a GPU at these sizes.
    - ``"auto"`` (default): ``"dense"`` on CUDA for trees of up to :data:`DENSE_MAX_NODES` nodes, ``"subtree"``
      otherwise (:meth:`formulation_for`).

    All marginals (``log_marginals``, for inference) come from path scores ``c_v = s_v + c_parent(v)`` top-down
    and subtree log-sums ``A_v = logsumexp(c_v, A_children(v))`` bottom-up, ``log Z = logsumexp(0, A over
    level 1)`` (0 = the empty state), ``log P(v) = A_v - log Z``.

    Args:
        hierarchy: the label tree.
        formulation: ``"auto"`` | ``"subtree"`` | ``"dense"``, as above.
    """

    def __init__(self, hierarchy: Hierarchy, formulation: Formulation = "auto") -> None:
        super().__init__()
        if formulation not in get_args(Formulation):
            raise LossError(
                f"formulation must be one of {', '.join(get_args(Formulation))}, got {formulation!r} "
                "(config key loss.formulation)"
            )
        self.formulation = formulation
        self.level_sizes = hierarchy.level_sizes
        for i, parents in enumerate(hierarchy.level_parents, start=2):
            self.register_buffer(f"parents_l{i}", parents, persistent=False)
        offsets = torch.tensor(hierarchy.offsets[:-1]).unsqueeze(1)
        local = hierarchy.ancestor_at_level  # (L, N) local index inside the level, -1 above v's level
        ancestor = torch.where(local >= 0, local + offsets, -1)  # (L, N) global index
        # (L, N+1): each state's ancestor at each level; state 0 is the empty state, state v + 1 that of node v.
        # int32 halves the (B, N+1) table the losses gather per batch; node indices fit easily.
        state_ancestor = torch.cat([torch.full((len(self.level_sizes), 1), -1), ancestor], 1).int()
        self.register_buffer("state_ancestor", state_ancestor, persistent=False)
        # ((N+1) * L,): each state's nodes as 1 + node index, 0 where it has none (the dense formulation's gather)
        self.register_buffer("state_nodes", (state_ancestor + 1).T.reshape(-1), persistent=False)
        self.register_buffer("node_level", hierarchy.node_level - 1, persistent=False)

    def formulation_for(self, device: torch.device) -> str:
        """The formulation ``forward`` uses for scores on ``device``: ``"subtree"`` or ``"dense"``."""
        if self.formulation != "auto":
            return self.formulation
        fits = sum(self.level_sizes) <= DENSE_MAX_NODES
        return "dense" if device.type == "cuda" and fits else "subtree"

    def parents(self, level: int) -> torch.Tensor:
        """(n_level,) local index of each node's parent in level - 1 (level >= 2), on the loss's device."""
        return getattr(self, f"parents_l{level}")

    def _all_parents(self) -> list[torch.Tensor]:
        return [self.parents(lvl) for lvl in range(2, len(self.level_sizes) + 1)]

    def _check(self, scores: torch.Tensor) -> torch.Tensor:
        """Validate the shape; return the scores in at least fp32 (log-sum-exp over many nodes needs it, even
        under mixed precision)."""
        if scores.dim() != 2 or scores.shape[1] != sum(self.level_sizes):
            raise ValueError(
                f"TreeLoss expects scores of shape (B, {sum(self.level_sizes)}), got {tuple(scores.shape)}"
            )
        return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores

    def log_marginals(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, N) scores -> (B, N) ``log P(v)`` for every node."""
        scores = self._check(scores)
        parents = self._all_parents()
        paths = _state_scores(scores, self.level_sizes, parents).split(self.level_sizes, 1)
        subtree = [paths[-1]]  # A_v, filled from the leaves up
        for lvl in range(len(paths) - 1, 0, -1):
            subtree.insert(
                0, _group_logsumexp(subtree[0], parents[lvl - 1], self.level_sizes[lvl - 1], paths[lvl - 1])
            )
        top = subtree[0]
        log_z = torch.logsumexp(torch.cat([top.new_zeros(top.shape[0], 1), top], dim=1), dim=1, keepdim=True)
        return torch.cat(subtree, dim=1) - log_z

    def marginals(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, N) scores -> (B, N) marginal probabilities ``P(v)``; inside a level they sum to at most 1."""
        return self.log_marginals(scores).exp()

    def leaf_marginals(self, leaf_logits: torch.Tensor) -> torch.Tensor:
        """(B, n_L) leaf logits -> (B, N): each node's share of the leaf softmax, the sum over the leaves under it
        (how a flat leaf classifier answers a coarse question); each level sums to 1."""
        p = leaf_logits.float().softmax(1)
        parts = [p]
        for lvl in range(len(self.level_sizes), 1, -1):  # each level collects its children's mass
            above = p.new_zeros(p.shape[0], self.level_sizes[lvl - 2])
            parts.insert(0, above.index_add(1, self.parents(lvl), parts[0]))
        return torch.cat(parts, dim=1)

    def node_probabilities(self, output, source: str = "sigmoid") -> torch.Tensor:
        """(B, N) the probability of every node from a network's :class:`hrn.model.HRNOutput`, from ``source``
        (one of :data:`SCORE_SOURCES`): the tree marginals of ``output.scores(source)``, or with ``"leaf"`` the
        leaf softmax summed up the tree (:meth:`leaf_marginals`)."""
        if source == "leaf":
            return self.leaf_marginals(output.leaf_logits)
        if source not in SCORE_SOURCES:
            raise LossError(f"score source must be one of {', '.join(SCORE_SOURCES)}, got {source!r}")
        return self.marginals(output.scores(source))

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean of ``-log P(target)`` over the batch.

        Args:
            scores: (B, N) concatenated per-level scores (sigmoid outputs in the paper, or raw logits).
            targets: (B,) long node indices, at any level.
        """
        scores = self._check(scores)
        if self.formulation_for(scores.device) == "dense":
            return _dense_nll(scores, targets, self.state_nodes, self.state_ancestor, self.node_level)
        return _TreeNLL.apply(
            scores,
            targets,
            self.level_sizes,
            self._all_parents(),
            self.state_ancestor[:, 1:],
            self.node_level,
        )


class CompositeLoss(nn.Module):
    """The HRN objective: ``L = L_tree + λ · CE(leaf logits, leaf label)`` (Chen et al., CVPR 2022, Eq. 6).

    The cross-entropy is averaged over the leaf-labelled samples of the batch only (zero when there are none):
    a sample relabelled to a coarser node has no leaf label to learn from.

    Args:
        hierarchy: the label tree.
        leaf_weight: λ (1 in the paper).
        tree_scores: ``"sigmoid"`` feeds the per-level sigmoid outputs to the tree loss, as the authors do;
            ``"logits"`` feeds the raw pre-sigmoid logits (an ablation).
        formulation: how the tree loss is computed (:class:`TreeLoss`); the value is the same.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        leaf_weight: float = 1.0,
        tree_scores: str = "sigmoid",
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
