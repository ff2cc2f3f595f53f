"""The losses of the methods the HRN paper compares with (:mod:`hrn.nets.compared` holds their networks).

=============  ===========================  ================================================================
loss config    class                        for the network
=============  ===========================  ================================================================
chmcnn         :class:`MCLoss`              :class:`hrn.nets.CHMCNN`
hmcnf          :class:`HMCNFLoss`           :class:`hrn.nets.HMCNF`
chang          :class:`ChangLoss`           :class:`hrn.nets.ChangNet`
hmclmlp        :class:`HMCLMLPLoss`         :class:`hrn.nets.HMCLMLP`
=============  ===========================  ================================================================

Labels are node indices at any level; each class docstring says how a coarse-labelled sample counts. Every loss
builds its targets from the tree's index buffers (:class:`hrn.losses.base.TreeTargets`), and reads the node
probabilities of its network from the per-level sigmoid outputs (``tree_scores = "sigmoid"``).

Shapes: B = batch, N = nodes of the tree, L = levels, n_l = nodes of level l.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hrn.losses.base import LossError, LossTerms, TreeTargets, masked_mean
from hrn.nets.compared import BaselineOutput, max_constraint
from hrn.nets.output import HRNOutput
from hrn.tree import Hierarchy, TreeScores

__all__ = ["COARSE_DESCENDANTS", "ChangLoss", "HMCLMLPLoss", "HMCNFLoss", "MCLoss"]

COARSE_DESCENDANTS = ("negative", "ignore")


def _check_coarse(value: str) -> str:
    if value not in COARSE_DESCENDANTS:
        raise LossError(
            f"loss.coarse_descendants={value!r}: use one of {', '.join(COARSE_DESCENDANTS)} (negative: the "
            "authors' encoding, a coarse label's descendants are negatives; ignore: they leave the loss)"
        )
    return value


class MCLoss(TreeTargets):
    """MCLoss of C-HMCNN (Giunchiglia & Lukasiewicz, NeurIPS 2020): BCE over all N nodes where a positive node v
    is predicted by ``max_{d ⊒ v} y_d · h_d`` (its best *positive* descendant) and a negative node by MCM(h)_v.

    Computed in logit space (the max commutes with the sigmoid, so it equals the paper's BCE on probabilities,
    but stays finite for large logits): positives use the max of z over v's positive descendants, negatives
    MCM(z); then ``binary_cross_entropy_with_logits``, averaged over the (B, N) entries that count.

    Args:
        hierarchy: the label tree.
        coarse_descendants: what a coarse label's descendants are: ``"negative"`` (the authors' encoding, see
            :class:`CHMCNN`) or ``"ignore"`` (left out of the mean).

    Terms: ``mcloss``.
    """

    tree_scores: TreeScores = "sigmoid"

    def __init__(self, hierarchy: Hierarchy, coarse_descendants: str = "negative") -> None:
        super().__init__(hierarchy)
        self.coarse_descendants = _check_coarse(coarse_descendants)

    def forward(self, output: BaselineOutput, targets: torch.Tensor) -> LossTerms:
        """``output.extras["node_logits"]``: (B, N) unconstrained z; ``targets``: (B,) node indices, any level."""
        z = output.extras["node_logits"].float()  # (B, N)
        y = self.positives(targets)  # (B, N) bool
        negative_pred = max_constraint(z, self.descendants)  # (B, N)
        # (B, N, N): d is a positive descendant of v; the row of a positive v always holds v itself.
        pos_desc = self.descendants.unsqueeze(0) & y.unsqueeze(1)
        positive_pred = torch.where(pos_desc, z.unsqueeze(1), float("-inf")).amax(dim=-1)  # -inf off y
        pred = torch.where(y, positive_pred, negative_pred)
        bce = F.binary_cross_entropy_with_logits(pred, y.to(pred.dtype), reduction="none")
        if self.coarse_descendants == "ignore":
            loss = masked_mean(bce, ~self.unknown(targets))
        else:
            loss = bce.mean()
        return LossTerms(loss, {"mcloss": loss})


class HMCNFLoss(TreeTargets):
    """HMCN-F's loss (Wehrmann et al., ICML 2018): ``BCE(P_L) + BCE(P_G) + λ · L_H`` with the hierarchical
    violation penalty ``L_H = mean over samples and non-root nodes c of max(0, P_F[c] - P_F[parent(c)])²``.

    Each BCE is the mean over the (B, N) entries that count (all of them by default), on the logits.

    Args:
        hierarchy: the label tree.
        violation_weight: λ (0.1 in the paper).
        coarse_descendants: ``"negative"`` (the authors' encoding, see :class:`HMCNF`) or ``"ignore"``.

    Terms: ``local``, ``global``, ``violation`` (already multiplied by λ).
    """

    tree_scores: TreeScores = "sigmoid"

    def __init__(
        self, hierarchy: Hierarchy, violation_weight: float = 0.1, coarse_descendants: str = "negative"
    ) -> None:
        super().__init__(hierarchy)
        self.coarse_descendants = _check_coarse(coarse_descendants)
        self.violation_weight = violation_weight
        child = torch.nonzero(hierarchy.parent >= 0).flatten()
        self.register_buffer("child", child, persistent=False)  # (N - n_1,)
        self.register_buffer("child_parent", hierarchy.parent[child], persistent=False)  # (N - n_1,)

    def forward(self, output: BaselineOutput, targets: torch.Tensor) -> LossTerms:
        """``output``: from :class:`HMCNF`; ``targets``: (B,) node indices at any level."""
        y = self.positives(targets).float()  # (B, N)
        known = ~self.unknown(targets) if self.coarse_descendants == "ignore" else torch.ones_like(y).bool()
        terms = {}
        for name in ("local", "global"):
            logits = output.extras[f"{name}_logits"].float()
            terms[name] = masked_mean(F.binary_cross_entropy_with_logits(logits, y, reduction="none"), known)
        p = output.scores("sigmoid").float()  # (B, N) final P_F
        gap = (p[:, self.child] - p[:, self.child_parent]).clamp_min(0.0)
        terms["violation"] = self.violation_weight * gap.square().mean()
        return LossTerms(sum(terms.values()), terms)


class ChangLoss(TreeTargets):
    """Chang et al.'s loss (CVPR 2021): the sum over levels of the softmax cross-entropy of each level.

    Level l's CE is averaged over the samples whose label is at level l or finer (the level-l class is known);
    it is 0 (graph kept) when the batch has none.

    Terms: ``ce_l1``, ..., ``ce_lL``.
    """

    tree_scores: TreeScores = "sigmoid"

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__(hierarchy)

    def forward(self, output: BaselineOutput, targets: torch.Tensor) -> LossTerms:
        """``output.extras["softmax_logits"]``: (B, N); ``targets``: (B,) node indices at any level."""
        per_level = torch.split(output.extras["softmax_logits"].float(), self.level_sizes, dim=1)
        level_targets = self.ancestor_at_level[:, targets]  # (L, B), -1 where unknown
        terms = {}
        for lvl, (logits, t) in enumerate(zip(per_level, level_targets, strict=True), start=1):
            ce = F.cross_entropy(logits, t.clamp_min(0), reduction="none")  # (B,)
            terms[f"ce_l{lvl}"] = masked_mean(ce, t >= 0)
        return LossTerms(sum(terms.values()), terms)


class HMCLMLPLoss(TreeTargets):
    """HMC-LMLP's loss, all levels at once: ``sum over levels l of BCE(level-l logits, one-hot level-l class)``.

    Level l's BCE is the mean over its n_l outputs and the samples whose label is at level l or finer; 0 (graph
    kept) when the batch has none.

    Terms: ``bce_l1``, ..., ``bce_lL``.
    """

    tree_scores: TreeScores = "sigmoid"

    def __init__(self, hierarchy: Hierarchy) -> None:
        super().__init__(hierarchy)

    def forward(self, output: HRNOutput, targets: torch.Tensor) -> LossTerms:
        """``output.level_logits``: per level (B, n_l); ``targets``: (B,) node indices at any level."""
        level_targets = self.ancestor_at_level[:, targets]  # (L, B), -1 where unknown
        terms = {}
        for lvl, (logits, t) in enumerate(zip(output.level_logits, level_targets, strict=True), start=1):
            logits = logits.float()
            y = F.one_hot(t.clamp_min(0), logits.shape[1]).to(logits.dtype)  # (B, n_l)
            bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
            terms[f"bce_l{lvl}"] = masked_mean(bce, (t >= 0).unsqueeze(1).expand_as(bce))
        return LossTerms(sum(terms.values()), terms)
