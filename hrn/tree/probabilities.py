"""The tree's probabilities: HRN's distribution over the legal states of the label tree, its marginals, and the
top-down path through them. One home for them: the tree loss (:class:`hrn.losses.TreeLoss`, the negative log of
a marginal) builds on this class; the LightningModule, the exported predictor, Grad-CAM and ``hrn.predict`` read
their probabilities from it.

The legal states of the tree are the empty state and, for every node v, ``{v} ∪ ancestors(v)``: N + 1 states. With
per-node scores s (B, N), a state's score is the sum of s over its nodes, ``P(state) = exp(score) / Z``, and the
marginal ``P(v)`` sums P over the states of v's subtree (Chen et al., CVPR 2022, Eq. 3-5). All marginals come from
path scores ``c_v = s_v + c_parent(v)`` top-down and subtree log-sums ``A_v = logsumexp(c_v, A_children(v))``
bottom-up, ``log Z = logsumexp(0, A over level 1)`` (0 = the empty state), ``log P(v) = A_v - log Z``: O(N) per
sample, in log space, so raw logits of any magnitude are safe.

Shapes: B = batch, N = nodes of the tree, L = levels, n_l = nodes of level l.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
from torch import nn

from hrn.errors import HRNError
from hrn.tree.hierarchy import Hierarchy

__all__ = [
    "SOURCES",
    "TREE_SCORES",
    "TreeProbabilities",
    "TreeScores",
    "TreeScoresError",
    "check_source",
    "check_tree_scores",
    "confident_prediction",
    "leading_count",
    "group_logsumexp",
    "path_scores",
]

TreeScores = Literal["sigmoid", "logits", "leaf"]
TREE_SCORES: tuple[str, ...] = get_args(TreeScores)
"""What a network's node probabilities come from (:meth:`TreeProbabilities.node_probabilities`): the tree marginals
of the per-level sigmoid outputs (``"sigmoid"``, the paper) or of the raw logits (``"logits"``, an ablation), or the
leaf softmax summed up the tree (``"leaf"``: methods that train only the leaf head). Every loss says which
(``loss.tree_scores``, :class:`hrn.losses.HierarchicalLoss`)."""


class TreeScoresError(HRNError):
    """A ``tree_scores`` value that is not one of :data:`TREE_SCORES`."""


def check_tree_scores(value: str) -> str:
    """``value`` when it is one of :data:`TREE_SCORES`; one line naming the valid ones otherwise."""
    if value not in TREE_SCORES:
        raise TreeScoresError(f"tree_scores must be one of {', '.join(TREE_SCORES)}, got {value!r}")
    return value


Source = Literal["tree", "leaf", "mix", "heads"]
SOURCES: tuple[str, ...] = get_args(Source)
"""Which node probabilities a user gets (``probabilities=`` of ``hrn.predict``, ``hrn.evaluate``, ``hrn.export``,
``hrn.demo``; :meth:`TreeProbabilities.node_probabilities`): ``"tree"``, the tree marginals of the network's tree
scores (the paper's); ``"leaf"``, the leaf softmax summed up the tree (consistent by construction); ``"mix"``, their
node-by-node mean (a mixture of two distributions over the tree's states is one); ``"heads"``, each level head's
own probability with no tree inference and no temperature (HRN's sigmoids, C-HMCNN's constrained sigmoids, HMCN-F's
node probabilities, Chang et al.'s per-level softmax: how a compared method scores on its own outputs; not
consistent in general). For a network whose tree scores are ``"leaf"`` all are the leaf source. On Fashion-MNIST at relabel ratio 0.9 the leaf source was the best on every
measure but level-1 ECE (``experiments/predicting_at_the_right_level``): the default of prediction."""


def check_source(value: str) -> str:
    """``value`` when it is one of :data:`SOURCES`; one line naming the valid ones otherwise."""
    if value not in SOURCES:
        raise TreeScoresError(f"probabilities={value!r}: use one of {', '.join(SOURCES)}")
    return value


def group_logsumexp(
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


def path_scores(scores: torch.Tensor, level_sizes: list[int], parents: list[torch.Tensor]) -> torch.Tensor:
    """(B, N) node scores -> (B, N) state scores ``c_v = s_v + c_parent(v)``: the score of the state
    ``{v} ∪ ancestors(v)``, built top-down one level at a time (``parents[l]``: (n_{l+2},) local parent indices)."""
    c = torch.empty_like(scores)
    s_levels, c_levels = scores.split(level_sizes, 1), c.split(level_sizes, 1)
    c_levels[0].copy_(s_levels[0])
    for lvl in range(1, len(level_sizes)):
        # index_select, not c[:, idx]: on CPU it is ~4x faster forward and its backward avoids index_put_
        torch.add(s_levels[lvl], c_levels[lvl - 1].index_select(1, parents[lvl - 1]), out=c_levels[lvl])
    return c


class TreeProbabilities(nn.Module):
    """The probabilities HRN's tree defines: every node's marginal from per-node scores (or from a leaf softmax),
    and the top-down path through them.

    Holds the tree as index buffers (parents per level, each node's ancestor at every level), made once from the
    :class:`~hrn.tree.hierarchy.Hierarchy`; the methods are tensor operations only (no loop over the batch, no
    branch on values), so they trace and export (TorchScript, ONNX opset >= 18).

    Calibrated probabilities (``hrn.calibrate``) divide the scores by a temperature per level before the tree
    distribution, and the leaf logits by one before their softmax; without temperatures they are 1 and change
    nothing.

    Args:
        hierarchy: the label tree.
        tree_temperature: per level (L values) or one for all, the temperature of the tree scores.
        leaf_temperature: the temperature of the leaf softmax.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        tree_temperature: Sequence[float] | float | None = None,
        leaf_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.level_sizes = hierarchy.level_sizes
        self.offsets = hierarchy.offsets
        levels = torch.as_tensor(1.0 if tree_temperature is None else tree_temperature, dtype=torch.float32)
        levels = levels.expand(len(self.level_sizes)) if levels.dim() == 0 else levels
        if (
            levels.shape != (len(self.level_sizes),)
            or not bool((levels > 0).all())
            or not leaf_temperature > 0
        ):
            raise ValueError(
                f"temperatures must be positive, one per level or one for all, got {levels.tolist()}"
            )
        # (N,): each node's level's temperature
        per_node = levels.repeat_interleave(torch.tensor(self.level_sizes))
        self.register_buffer("tree_temperature", per_node, persistent=False)
        self.register_buffer("leaf_temperature", torch.tensor(float(leaf_temperature)), persistent=False)
        for i, parents in enumerate(hierarchy.level_parents, start=2):
            self.register_buffer(f"parents_l{i}", parents, persistent=False)
        local = hierarchy.ancestor_at_level  # (L, N) local index inside the level, -1 above v's level
        offsets = torch.tensor(self.offsets[:-1]).unsqueeze(1)
        # (L, N): global index of each node's ancestor at each level, -1 above the node's level
        self.register_buffer("ancestor", torch.where(local >= 0, local + offsets, -1), persistent=False)

    @classmethod
    def calibrated(cls, hierarchy: Hierarchy, calibration: Mapping | None = None) -> TreeProbabilities:
        """The probabilities with the temperatures of a calibration (``hrn.calibrate``'s record: its
        ``tree_temperature`` and ``leaf_temperature``), or without any (``None``)."""
        calibration = calibration or {}
        return cls(hierarchy, calibration.get("tree_temperature"), calibration.get("leaf_temperature", 1.0))

    @property
    def num_nodes(self) -> int:
        return self.offsets[-1]

    def parents(self, level: int) -> torch.Tensor:
        """(n_level,) local index of each node's parent in level - 1 (level >= 2), on the module's device."""
        return getattr(self, f"parents_l{level}")

    def all_parents(self) -> list[torch.Tensor]:
        """:meth:`parents` of levels 2..L."""
        return [self.parents(lvl) for lvl in range(2, len(self.level_sizes) + 1)]

    def check_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Validate the shape; return the scores in at least fp32 (log-sum-exp over many nodes needs it, even
        under mixed precision)."""
        if scores.dim() != 2 or scores.shape[1] != self.num_nodes:
            raise ValueError(
                f"{type(self).__name__} expects scores of shape (B, {self.num_nodes}), got {tuple(scores.shape)}"
            )
        return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores

    def log_marginals(self, scores: torch.Tensor) -> torch.Tensor:
        """(B, N) scores -> (B, N) ``log P(v)`` for every node."""
        scores = self.check_scores(scores)
        parents = self.all_parents()
        paths = path_scores(scores, self.level_sizes, parents).split(self.level_sizes, 1)
        subtree = [paths[-1]]  # A_v, filled from the leaves up
        for lvl in range(len(paths) - 1, 0, -1):
            subtree.insert(
                0, group_logsumexp(subtree[0], parents[lvl - 1], self.level_sizes[lvl - 1], paths[lvl - 1])
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

    def node_probabilities(self, output, tree_scores: str = "sigmoid", source: str = "tree") -> torch.Tensor:
        """(B, N) the probability of every node from a network's output (:class:`hrn.nets.HRNOutput`), read from
        ``tree_scores`` (one of :data:`TREE_SCORES`): the tree marginals of ``output.scores(tree_scores)``, or with
        ``"leaf"`` the leaf softmax summed up the tree (:meth:`leaf_marginals`); each through its temperature.

        ``source`` (one of :data:`SOURCES`) picks among them whatever the tree scores: ``"tree"`` as just said,
        ``"leaf"`` the leaf softmax summed up the tree, ``"mix"`` the mean of the two, ``"heads"`` the heads' own
        probabilities (``output.level_probs``, untouched)."""
        source = check_source(source)
        if check_tree_scores(tree_scores) == "leaf":
            source = "leaf"  # a leaf-only network answers with its leaf softmax, whatever is asked
        if source == "heads":
            return output.scores("sigmoid").float()
        if source != "tree":
            leaf = self.leaf_marginals(output.leaf_logits.float() / self.leaf_temperature)
            if source == "leaf":
                return leaf
        tree = self.marginals(output.scores(tree_scores).float() / self.tree_temperature)
        return tree if source == "tree" else 0.5 * (tree + leaf)

    def leaf_probabilities(self, leaf_logits: torch.Tensor) -> torch.Tensor:
        """(B, n_L) leaf logits -> (B, n_L) the leaf softmax, through its temperature."""
        return (leaf_logits.float() / self.leaf_temperature).softmax(1)

    def top_down_path(self, marginals: torch.Tensor, through: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N) marginals -> (B, L) long global node indices: a root-to-leaf path per sample.

        Without ``through``: the most probable level-1 node, then at each level the most probable child of the
        node above (the prediction; the first maximum wins a tie, children in node order). ``through`` (B,) long:
        the path through that node instead, its ancestors above it and the most probable child at each level
        below it; -1 in a row keeps that row's prediction.
        """
        levels = marginals.split(self.level_sizes, 1)
        fixed = self.ancestor[:, through.clamp_min(0)] if through is not None else None  # (L, B) or None
        known = (through >= 0) if through is not None else None  # (B,)

        def pinned(lvl: int, node: torch.Tensor) -> torch.Tensor:  # the row's own node where it names one
            if fixed is None:
                return node
            keep = known & (fixed[lvl - 1] >= 0)
            return torch.where(keep, fixed[lvl - 1] - self.offsets[lvl - 1], node)

        node = pinned(1, levels[0].argmax(1))  # (B,) local index inside the level
        path = [node]
        for lvl in range(2, len(self.level_sizes) + 1):  # a fixed number of levels, unrolled by tracing
            # (B, n_l): the children of each sample's node keep their marginal, the others drop below any (>= 0)
            children = self.parents(lvl) == node.unsqueeze(1)
            node = pinned(lvl, torch.where(children, levels[lvl - 1], -1.0).argmax(1))
            path.append(node + self.offsets[lvl - 1])
        return torch.stack(path, dim=1)

    def confident_node(
        self, marginals: torch.Tensor, threshold: float, path: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prediction at the deepest confident node: walk the top-down path (``path``, or
        :meth:`top_down_path` of ``marginals``) and stop at the last node whose marginal is at least
        ``threshold`` (0: the whole path, down to a leaf).

        Returns ``node`` (B,) long, the predicted node's global index (-1 when the level-1 node is already below
        the threshold), and ``depth`` (B,) long, its level (0 for none).
        """
        path = self.top_down_path(marginals) if path is None else path  # (B, L)
        return confident_prediction(path, marginals.gather(1, path), threshold)


def confident_prediction(
    path: torch.Tensor, path_probs: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) top-down paths and their nodes' marginals -> the node predicted at ``threshold`` (B,), -1 for none,
    and its level (B,), 0 for none: the last node of the path before the first whose marginal is under the
    threshold (:meth:`TreeProbabilities.confident_node`)."""
    depth = leading_count(path_probs >= threshold)  # the nodes that reach it before the first that does not
    node = path.gather(1, (depth - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    return torch.where(depth > 0, node, -1), depth


def leading_count(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool -> (B,) long: how many entries of each row are true before the first false one. (By argmax,
    not a cumulative product: ONNX has no integer product to export that to.)"""
    missed = ~mask
    first_miss = missed.to(torch.uint8).argmax(1)  # the first false entry (argmax keeps the first maximum)
    return torch.where(missed.any(1), first_miss, mask.shape[1]).long()
