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
from torchmetrics.functional.classification import binary_calibration_error, multilabel_average_precision

from hrn.errors import HRNError
from hrn.tree import Hierarchy, TreeProbabilities
from hrn.tree.probabilities import confident_prediction, leading_count

__all__ = [
    "DEPRECATED_ALIASES",
    "TOP_K",
    "HierarchicalMetrics",
    "SampleRecords",
    "ThresholdError",
    "check_threshold",
    "hierarchical_prf",
    "level_confidence",
    "level_ece",
    "level_predictions",
]

TOP_K = 5  # hdist_at5: the leaf softmax's k most probable leaves
# metrics under their old names for one release: new name -> old name (same value)
DEPRECATED_ALIASES = {"hdist_at5": "mistake_severity_top5"}
ECE_BINS = 15  # torchmetrics' default number of confidence bins


class ThresholdError(HRNError):
    """A threshold outside [0, 1]."""


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in [0, 1]; one line otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ThresholdError(
            f"threshold={threshold!r}: a marginal probability in [0, 1] (0 = the whole path, down to a leaf)"
        )
    return float(threshold)


def hierarchical_prf(
    depth: torch.Tensor, match: torch.Tensor, label_level: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hierarchical precision, recall and F1, micro-averaged as hiclass computes them (Kiritchenko et al.): with P
    the predicted node and its ancestors and T the label and its ancestors, ``hP = Σ|P ∩ T| / Σ|P|``,
    ``hR = Σ|P ∩ T| / Σ|T|``, hF their harmonic mean.

    For predictions on the top-down path, ``|P|`` is the predicted node's level (``depth``, 0 for none), ``|T|``
    the label's (``label_level``), and ``|P ∩ T|`` the length of their common prefix, at most ``match``, the number
    of leading path nodes that are the label's ancestors. All (M,). hP is NaN when nothing is predicted.
    """
    inter = torch.minimum(depth, match).sum().float()
    predicted, true = depth.sum().float(), label_level.sum().float()
    precision = inter / predicted if predicted > 0 else torch.tensor(float("nan"), device=depth.device)
    recall = inter / true.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else recall * 0
    return precision, recall, f1


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
    path: torch.Tensor  # (M, L) global node indices of the top-down path of the tree marginals
    path_probs: torch.Tensor  # (M, L) the marginal of each node of the path
    node: torch.Tensor  # (M,) the node predicted at the threshold (the deepest confident one), -1 for none


STATES = (
    "index", "target", "preds", "leaf_sigmoid", "marginal_preds", "marginal_conf", "path", "path_probs",
    "leaf_top", "scores",
)  # fmt: skip


class HierarchicalMetrics(Metric):
    """Per-level accuracy and the hierarchy-aware metrics of a split.

    ``compute()`` returns (keys without the stage prefix): ``acc_l{l}`` (paper heads), ``acc_leaf_sigmoid``,
    ``acc_l{l}_marginal`` (argmax of the tree marginals inside each level, consistent by construction), ``wap``
    (the level accuracies weighted by their number of classes), ``ap_micro``, ``full_path_acc``, ``consistency``
    and ``tice`` (1 - consistency: the share of per-level predictions that form no root-to-leaf path),
    ``mistake_severity`` (mean height of the lowest common ancestor of a wrong leaf prediction and the truth) and
    ``hdist_at5`` (the average hierarchical distance at 5 of Bertinetto et al., 2020: the LCA height of each of the
    leaf softmax's 5 most probable leaves, a right one counting 0; not a mistake severity, which counts mistakes
    only; ``mistake_severity_top5`` is its 0.3 name, kept one release),
    ``h_precision`` / ``h_recall`` / ``h_f1`` (:func:`hierarchical_prf` of the prediction at ``threshold``: the
    deepest node of the marginals' top-down path whose marginal reaches it), ``coverage_l{l}`` (the share of samples
    whose prediction reaches level l), ``ece_l{l}`` (expected calibration error of the marginals at level l, the
    top-label form of torchmetrics' ``CalibrationError``, 15 bins) and ``num_samples``. A sample counts for a level
    only if its label is at that level or finer.

    Args:
        hierarchy: the label tree.
        threshold: the marginal a predicted node must reach (0: the whole path).
        ap_max_nodes: ``ap_micro`` keeps an (M, N) score matrix; above this many nodes it is not computed (and a
            warning says so) to keep memory bounded.
    """

    full_state_update = False

    def __init__(self, hierarchy: Hierarchy, threshold: float = 0.0, ap_max_nodes: int = 20_000) -> None:
        super().__init__()
        self.num_levels = hierarchy.num_levels
        self.level_sizes = hierarchy.level_sizes
        self.threshold = check_threshold(threshold)
        self.with_ap = hierarchy.num_nodes <= ap_max_nodes
        self.tree = TreeProbabilities(hierarchy)  # its top-down path (the marginals come in already computed)
        self.register_buffer("ancestor_at_level", hierarchy.ancestor_at_level, persistent=False)  # (L, N)
        if self.with_ap:
            # (N, N) bool, for AP's multi-hot targets only: 10 GB at 100,000 nodes, so not built above
            self.register_buffer("ancestors", hierarchy.ancestors, persistent=False)
        else:
            log.warning(
                "ap_micro is not computed: the tree has %d nodes, over ap_max_nodes=%d (its (M, N) scores and the "
                "(N, N) ancestor matrix would not fit in memory); the other metrics are",
                hierarchy.num_nodes, ap_max_nodes,
            )  # fmt: skip
        self.register_buffer("offsets", torch.tensor(hierarchy.offsets), persistent=False)
        for name in STATES:
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
        conf, classes = level_confidence(marginals, self.level_sizes)
        self.marginal_preds.append(classes)
        self.marginal_conf.append(conf)
        path = self.tree.top_down_path(marginals)
        self.path.append(path)
        self.path_probs.append(marginals.float().gather(1, path))
        self.leaf_top.append(leaf_logits.topk(min(TOP_K, leaf_logits.shape[1]), dim=1).indices)
        if not self.with_ap:
            scores = marginals.new_zeros(b, 0)
        elif scores is None:
            scores = ap_scores(sigmoid, leaf_logits)
        self.scores.append(scores.float())

    def _gathered(self) -> dict[str, torch.Tensor]:
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        out = {k: cat(getattr(self, k)) for k in STATES}
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
        target = s["target"]
        truth = self.ancestor_at_level[:, target].T  # (M, L), -1 where the label is coarser
        known = truth >= 0
        out = self._accuracies(s, truth, known)
        node, at_threshold = self._at_threshold(s, truth, known)
        out.update(at_threshold)
        if self.with_ap:
            multi_hot = self.ancestors[target].long()  # (M, N): the label and its ancestors
            out["ap_micro"] = multilabel_average_precision(
                s["scores"], multi_hot, num_labels=multi_hot.shape[1], average="micro", thresholds=None
            )
        out["num_samples"] = torch.tensor(float(target.shape[0]), device=target.device)
        self.records = SampleRecords(
            s["index"], target, s["preds"], s["scores"], s["path"], s["path_probs"], node
        )
        return out

    def _accuracies(self, s: dict, truth: torch.Tensor, known: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-level accuracies and what follows from the per-level predictions alone."""
        preds = s["preds"]
        correct = (preds == truth) & known
        out: dict[str, torch.Tensor] = {}
        for lvl in range(self.num_levels):
            out[f"acc_l{lvl + 1}"] = _rate(correct[:, lvl], known[:, lvl])
        out["acc_leaf_sigmoid"] = _rate((s["leaf_sigmoid"] == truth[:, -1]) & known[:, -1], known[:, -1])
        marginal_correct = (s["marginal_preds"] == truth) & known
        for lvl in range(self.num_levels):
            out[f"acc_l{lvl + 1}_marginal"] = _rate(marginal_correct[:, lvl], known[:, lvl])
        sizes = torch.tensor(self.level_sizes, dtype=torch.float32, device=preds.device)
        accuracies = torch.stack([out[f"acc_l{lvl + 1}"] for lvl in range(self.num_levels)])
        out["wap"] = (accuracies * sizes).sum() / sizes.sum()
        for lvl, ece in enumerate(level_ece(s["marginal_conf"], marginal_correct, known), start=1):
            out[f"ece_l{lvl}"] = ece

        leaf_labelled = known[:, -1]
        out["full_path_acc"] = _rate(correct.all(1) & leaf_labelled, leaf_labelled)
        # consistent: each level's prediction is the parent of the next level's prediction
        global_preds = preds + self.offsets[:-1]  # (M, L) node indices
        consistent = torch.ones(preds.shape[0], dtype=torch.bool, device=preds.device)
        for lvl in range(1, self.num_levels):
            parent_local = self.ancestor_at_level[lvl - 1, global_preds[:, lvl]]
            consistent &= parent_local == preds[:, lvl - 1]
        out["consistency"] = consistent.float().mean()
        out["tice"] = 1 - out["consistency"]
        # mistake severity: height of the LCA of a wrong leaf prediction and the truth = L - levels they share
        wrong = leaf_labelled & ~correct[:, -1]
        out["mistake_severity"] = (
            self._lca_height(global_preds[wrong, -1], truth[wrong]).mean()
            if wrong.any()
            else torch.tensor(0.0, device=preds.device)
        )
        top = s["leaf_top"][leaf_labelled] + self.offsets[-2]  # (W, k) global leaf indices
        rows = truth[leaf_labelled].repeat_interleave(top.shape[1], dim=0)
        out["hdist_at5"] = (
            self._lca_height(top.flatten(), rows).mean()
            if leaf_labelled.any()
            else torch.tensor(0.0, device=preds.device)
        )
        out[DEPRECATED_ALIASES["hdist_at5"]] = out["hdist_at5"]  # the 0.3 name, kept for one release
        return out

    def _lca_height(self, leaves: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """(W,) predicted leaves (global indices) and their (W, L) true classes per level -> (W,) float: the
        height of their lowest common ancestor, L less the levels they share (0 for the right leaf)."""
        shared = (self.ancestor_at_level[:, leaves].T == truth).sum(1)
        return (self.num_levels - shared).float()

    def _at_threshold(
        self, s: dict, truth: torch.Tensor, known: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The prediction at the threshold (deepest confident node) and what it scores: hP, hR, hF, coverage."""
        node, depth = confident_prediction(s["path"], s["path_probs"], self.threshold)
        match = true_prefix(s["path"], truth, known, self.offsets)
        precision, recall, f1 = hierarchical_prf(depth, match, known.sum(1))
        out = {"h_precision": precision, "h_recall": recall, "h_f1": f1}
        for lvl in range(1, self.num_levels + 1):
            out[f"coverage_l{lvl}"] = (depth >= lvl).float().mean()
        return node, out


def level_ece(confidence: torch.Tensor, correct: torch.Tensor, known: torch.Tensor) -> list[torch.Tensor]:
    """Per level, the expected calibration error (15 bins, L1) of the top-label predictions of the marginals:
    ``confidence`` (M, L) the largest marginal of the level, ``correct`` (M, L) whether its node is the label's
    class there, over the samples ``known`` (M, L) at that level. The binary form of torchmetrics'
    ``CalibrationError`` on (confidence, correct) is its multiclass top-label ECE."""
    out = []
    for lvl in range(confidence.shape[1]):
        rows = known[:, lvl]
        conf, hit = confidence[rows, lvl].clamp(0, 1), correct[rows, lvl].long()
        out.append(
            binary_calibration_error(conf, hit, n_bins=ECE_BINS) if rows.any() else conf.new_tensor(0.0)
        )
    return out


def level_confidence(marginals: torch.Tensor, level_sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) marginals -> per level the largest marginal (B, L) and its local class (B, L)."""
    per_level = [m.max(1) for m in torch.split(marginals.float(), level_sizes, dim=1)]
    return torch.stack([m.values for m in per_level], dim=1), torch.stack(
        [m.indices for m in per_level], dim=1
    )


def _rate(hit: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return hit.sum().float() / count.sum().clamp_min(1).float()


def true_prefix(
    path: torch.Tensor, truth: torch.Tensor, known: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """(M,) how many leading nodes of each top-down path are the label or its ancestors: (M, L) ``path`` (global
    indices), ``truth`` (M, L) the label's class per level (local, -1 below its level)."""
    truth_global = torch.where(known, truth + offsets[:-1], -1)
    return leading_count(path == truth_global)
