"""Evaluation metrics of hierarchical classification (design §4), as one torchmetrics ``Metric``.

It keeps a few numbers per sample (level predictions, scores, the sample's dataset index) and computes every
metric at the end, after torchmetrics has gathered the states of all processes. Samples are de-duplicated by
their dataset index, so the padding that a ``DistributedSampler`` adds to even out the ranks never reaches the
reported numbers, and every image counts once.

Shapes: M samples, N nodes, L levels, n_l classes of level l.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multilabel_average_precision

from hrn.tree import Hierarchy

__all__ = ["HierarchicalMetrics", "SampleRecords", "level_predictions"]

log = logging.getLogger(__name__)


def level_predictions(sigmoid: list[torch.Tensor], leaf_logits: torch.Tensor) -> torch.Tensor:
    """The paper's per-level predictions: argmax of the sigmoid head at levels < L, of the softmax head at the
    leaf level. (B, L) local class indices."""
    return torch.stack([s.argmax(1) for s in sigmoid[:-1]] + [leaf_logits.argmax(1)], dim=1)


def ap_scores(sigmoid: list[torch.Tensor], leaf_logits: torch.Tensor) -> torch.Tensor:
    """(B, N) scores for ``ap_micro``: sigmoid outputs of levels < L, then the softmax of the leaf logits."""
    return torch.cat([*sigmoid[:-1], leaf_logits.float().softmax(1)], dim=1)


@dataclass
class SampleRecords:
    """Per-sample results after de-duplication, in dataset-index order (what ``hrn.evaluate`` writes out)."""

    index: torch.Tensor  # (M,) dataset index, or -1 when the batches carried none
    target: torch.Tensor  # (M,) node index of the label
    preds: torch.Tensor  # (M, L) local class predicted at each level (paper heads)
    scores: torch.Tensor  # (M, N) scores used for ap_micro (empty (M, 0) when AP is off)


class HierarchicalMetrics(Metric):
    """Per-level accuracy and the hierarchy-aware metrics of a split.

    ``compute()`` returns (keys without the stage prefix): ``acc_l{l}`` (paper heads), ``acc_leaf_sigmoid``,
    ``acc_l{l}_marginal`` (argmax of the tree marginals inside each level, consistent by construction),
    ``ap_micro``, ``full_path_acc``, ``consistency``, ``mistake_severity`` and ``num_samples``. A sample counts for a
    level only if its label is at that level or finer.

    Args:
        hierarchy: the label tree.
        ap_max_nodes: ``ap_micro`` keeps an (M, N) score matrix; above this many nodes it is not computed (and a
            warning says so) to keep memory bounded.
    """

    full_state_update = False

    def __init__(self, hierarchy: Hierarchy, ap_max_nodes: int = 20_000) -> None:
        super().__init__()
        self.num_levels = hierarchy.num_levels
        self.level_sizes = hierarchy.level_sizes
        self.with_ap = hierarchy.num_nodes <= ap_max_nodes
        self.register_buffer("ancestor_at_level", hierarchy.ancestor_at_level, persistent=False)  # (L, N)
        self.register_buffer("ancestors", hierarchy.ancestors, persistent=False)  # (N, N) bool
        self.register_buffer("offsets", torch.tensor(hierarchy.offsets), persistent=False)
        for name in ("index", "target", "preds", "leaf_sigmoid", "marginal_preds", "scores"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.records: SampleRecords | None = None

    def update(
        self,
        sigmoid: list[torch.Tensor],
        leaf_logits: torch.Tensor,
        marginals: torch.Tensor,
        target: torch.Tensor,
        index: torch.Tensor | None = None,
        preds: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> None:
        """sigmoid: per level (B, n_l); leaf_logits: (B, n_L); marginals: (B, N) tree marginals; target: (B,) node
        indices; index: (B,) dataset indices (for de-duplication), or None; preds: (B, L) per-level predictions
        and scores: (B, N) AP scores, each when it does not come from the paper's heads (defaults:
        ``level_predictions`` and ``ap_scores``)."""
        b = target.shape[0]
        self.index.append(index.long() if index is not None else torch.full((b,), -1, device=target.device))
        self.target.append(target.long())
        self.preds.append(preds if preds is not None else level_predictions(sigmoid, leaf_logits))
        self.leaf_sigmoid.append(sigmoid[-1].argmax(1))
        per_level = torch.split(marginals, self.level_sizes, dim=1)
        self.marginal_preds.append(torch.stack([m.argmax(1) for m in per_level], dim=1))
        if not self.with_ap:
            scores = marginals.new_zeros(b, 0)
        elif scores is None:
            scores = ap_scores(sigmoid, leaf_logits)
        self.scores.append(scores.float())

    def _gathered(self) -> dict[str, torch.Tensor]:
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        out = {
            k: cat(getattr(self, k))
            for k in ("index", "target", "preds", "leaf_sigmoid", "marginal_preds", "scores")
        }
        if (out["index"] >= 0).all() and out["index"].numel():  # drop repeats (DistributedSampler padding)
            order = torch.argsort(out["index"], stable=True)
            idx = out["index"][order]
            first = torch.ones_like(idx, dtype=torch.bool)
            first[1:] = idx[1:] != idx[:-1]
            keep = order[first]
            out = {k: v[keep] for k, v in out.items()}
        return out

    def compute(self) -> dict[str, torch.Tensor]:
        empty = len(self.target) == 0 if isinstance(self.target, list) else self.target.numel() == 0
        if empty:  # (after a DDP sync the list states arrive as tensors)
            return {}
        s = self._gathered()
        target, preds = s["target"], s["preds"]
        m = target.shape[0]
        truth = self.ancestor_at_level[:, target].T  # (M, L), -1 where the label is coarser
        known = truth >= 0
        correct = (preds == truth) & known

        def rate(hit: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            return hit.sum().float() / count.sum().clamp_min(1).float()

        out: dict[str, torch.Tensor] = {}
        for lvl in range(self.num_levels):
            out[f"acc_l{lvl + 1}"] = rate(correct[:, lvl], known[:, lvl])
        out["acc_leaf_sigmoid"] = rate((s["leaf_sigmoid"] == truth[:, -1]) & known[:, -1], known[:, -1])
        marginal_correct = (s["marginal_preds"] == truth) & known
        for lvl in range(self.num_levels):
            out[f"acc_l{lvl + 1}_marginal"] = rate(marginal_correct[:, lvl], known[:, lvl])

        leaf_labelled = known[:, -1]
        out["full_path_acc"] = rate(correct.all(1) & leaf_labelled, leaf_labelled)
        # consistent: each level's prediction is the parent of the next level's prediction
        global_preds = preds + self.offsets[:-1]  # (M, L) node indices
        consistent = torch.ones(m, dtype=torch.bool, device=preds.device)
        for lvl in range(1, self.num_levels):
            parent_local = self.ancestor_at_level[lvl - 1, global_preds[:, lvl]]
            consistent &= parent_local == preds[:, lvl - 1]
        out["consistency"] = consistent.float().mean()
        # mistake severity: height of the LCA of a wrong leaf prediction and the truth = L - levels they share
        wrong = leaf_labelled & ~correct[:, -1]
        if wrong.any():
            pred_anc = self.ancestor_at_level[:, global_preds[wrong, -1]].T  # (W, L)
            shared = (pred_anc == truth[wrong]).sum(1)
            out["mistake_severity"] = (self.num_levels - shared).float().mean()
        else:
            out["mistake_severity"] = torch.tensor(0.0, device=preds.device)
        if self.with_ap:
            multi_hot = self.ancestors[target].long()  # (M, N): the label and its ancestors
            out["ap_micro"] = multilabel_average_precision(
                s["scores"], multi_hot, num_labels=multi_hot.shape[1], average="micro", thresholds=None
            )
        out["num_samples"] = torch.tensor(float(m), device=preds.device)
        self.records = SampleRecords(s["index"], target, preds, s["scores"])
        return out
