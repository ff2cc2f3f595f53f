"""The paper's tree (hierarchical probabilistic) loss: ``-log P(label)``, the negative log of the label's marginal
under the tree distribution of :class:`hrn.tree.TreeProbabilities` (Chen et al., CVPR 2022, Eq. 3-5).

Shapes: B = batch, N = nodes of the tree, n_l = nodes of level l, L = levels.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from hrn.losses.base import LossError
from hrn.tree import Hierarchy, TreeProbabilities
from hrn.tree.probabilities import path_scores

__all__ = ["DENSE_MAX_NODES", "Formulation", "TreeLoss"]

Formulation = Literal["auto", "subtree", "dense"]

# "auto" takes the dense formulation on CUDA up to this many nodes. On a GPU both formulations are bound by kernel
# launches at these sizes and the dense one launches fewer (on one H100, the (N+1) x N matmul variant of a dense
# formulation beat the subtree kernel at every size measured, up to 10,000 nodes); larger trees are not measured on
# a GPU yet, so auto keeps the subtree kernel there, which keeps 2.3x less for the backward (24 against 56 MB at
# 100,000 nodes, batch 64). Calibrate with `python -m hrn.bench --device cuda`.
DENSE_MAX_NODES = 10_000


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
        c = path_scores(scores, level_sizes, parents)
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


class TreeLoss(TreeProbabilities):
    """Hierarchical probabilistic (tree) loss of HRN (Chen et al., CVPR 2022, Eq. 3-5): a sample labelled at node v
    (any level) costs ``-log P(v)``, the negative log of v's marginal under the tree distribution over the N + 1
    legal states (:class:`hrn.tree.TreeProbabilities`, whose marginals and paths it inherits).

    Computed exactly, never with the (N+1) x N state matrix, by one of two formulations of the same value
    (``formulation``); both work in log space, so raw logits of any magnitude are safe:

    - ``"subtree"``: O(N) time and memory per sample; one masked sum over the states for the target's marginal,
      with a hand-written backward (:class:`_TreeNLL`). Few operations per element: the fastest on a CPU.
    - ``"dense"``: all N + 1 state log-probabilities (``log_softmax``), then a masked ``logsumexp`` over the
      target's subtree, through autograd (:func:`_dense_nll`); O(N L). Fewer, larger kernels: faster where each
      kernel launch costs more than its arithmetic, as on a GPU at these sizes.
    - ``"auto"`` (default): ``"dense"`` on CUDA for trees of up to :data:`DENSE_MAX_NODES` nodes, ``"subtree"``
      otherwise (:meth:`formulation_for`).

    Args:
        hierarchy: the label tree.
        formulation: ``"auto"`` | ``"subtree"`` | ``"dense"``, as above.
    """

    def __init__(self, hierarchy: Hierarchy, formulation: Formulation = "auto") -> None:
        super().__init__(hierarchy)
        if formulation not in get_args(Formulation):
            raise LossError(
                f"formulation must be one of {', '.join(get_args(Formulation))}, got {formulation!r} "
                "(config key loss.formulation)"
            )
        self.formulation = formulation
        levels = len(self.level_sizes)
        # (L, N+1): each state's ancestor at each level; state 0 is the empty state, state v + 1 that of node v.
        # int32 halves the (B, N+1) table the losses gather per batch; node indices fit easily.
        state_ancestor = torch.cat([torch.full((levels, 1), -1), self.ancestor], 1).int()
        self.register_buffer("state_ancestor", state_ancestor, persistent=False)
        # ((N+1) * L,): each state's nodes as 1 + node index, 0 where it has none (the dense formulation's gather)
        self.register_buffer("state_nodes", (state_ancestor + 1).T.reshape(-1), persistent=False)
        self.register_buffer("node_level", hierarchy.node_level - 1, persistent=False)

    def formulation_for(self, device: torch.device) -> str:
        """The formulation ``forward`` uses for scores on ``device``: ``"subtree"`` or ``"dense"``."""
        if self.formulation != "auto":
            return self.formulation
        fits = self.num_nodes <= DENSE_MAX_NODES
        return "dense" if device.type == "cuda" and fits else "subtree"

    def forward(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean of ``-log P(target)`` over the batch.

        Args:
            scores: (B, N) concatenated per-level scores (sigmoid outputs in the paper, or raw logits).
            targets: (B,) long node indices, at any level.
        """
        scores = self.check_scores(scores)
        if self.formulation_for(scores.device) == "dense":
            return _dense_nll(scores, targets, self.state_nodes, self.state_ancestor, self.node_level)
        return _TreeNLL.apply(
            scores,
            targets,
            self.level_sizes,
            self.all_parents(),
            self.state_ancestor[:, 1:],
            self.node_level,
        )
