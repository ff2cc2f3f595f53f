"""What ``hrn.evaluate`` and ``hrn.train`` write and print from a split's metrics: the per-sample predictions, the
per-class table, a confusion matrix per level and the per-level accuracy table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from hrn.atomic import atomic_write_bytes
from hrn.metrics.hierarchical import SampleRecords, hierarchical_prf, true_prefix
from hrn.tree import Hierarchy
from hrn.tree.probabilities import confident_prediction

__all__ = [
    "CONFUSION_MAX_CLASSES",
    "confusion_figure",
    "confusion_matrix",
    "THRESHOLDS",
    "level_table",
    "per_class_rows",
    "specificity_rows",
    "write_confusions",
    "write_per_class",
    "write_predictions",
    "write_specificity",
]


def level_table(metrics: dict[str, float], level_sizes: list[int], stage: str = "test") -> str:
    """A plain-text table of per-level accuracy, coarse -> fine."""
    rows = [f"{'level':<8}{'classes':>8}{'accuracy':>10}"]
    for lvl, n in enumerate(level_sizes, start=1):
        rows.append(f"{lvl:<8}{n:>8}{metrics.get(f'{stage}/acc_l{lvl}', float('nan')):>10.4f}")
    if f"{stage}/acc_leaf_sigmoid" in metrics:
        rows.append(f"{'leaf (sigmoid head)':<16}{metrics[f'{stage}/acc_leaf_sigmoid']:>10.4f}")
    return "\n".join(rows)


def write_predictions(path: Path, records: SampleRecords, h: Hierarchy, paths: list[str]) -> None:
    """``predictions.npz``: ``target`` (M,) int64 the label's node, ``scores`` (M, N) as used for ``ap_micro`` and
    ``targets`` (M, N) multi-hot (label and ancestors), both (M, 0) when AP was not computed (a tree over
    ``ap_max_nodes``: M x N would not fit), ``preds`` (M, L) per-level predictions, ``node`` (M,) int64 the node
    predicted at the threshold (-1 for none), ``path`` (M, L) and ``path_probs`` (M, L) the top-down path of the
    marginals and its marginals, ``paths`` (M,) the image files."""
    target = records.target.cpu()
    with_ap = records.scores.shape[1] > 0
    # the (N, N) ancestor matrix only where AP needed it anyway
    multi_hot = h.ancestors[target] if with_ap else torch.zeros(len(target), 0, dtype=torch.bool)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        target=target.numpy().astype(np.int64),
        scores=records.scores.cpu().numpy(),
        targets=multi_hot.numpy().astype(np.uint8),
        preds=records.preds.cpu().numpy(),
        node=records.node.cpu().numpy().astype(np.int64),
        path=records.path.cpu().numpy(),
        path_probs=records.path_probs.cpu().numpy(),
        paths=np.array(paths),
    )
    atomic_write_bytes(path, buf.getvalue())


def per_class_rows(records: SampleRecords, h: Hierarchy) -> list[dict]:
    """Per node: its level, support (samples whose label implies it) and accuracy at its level."""
    truth = h.ancestor_at_level[:, records.target.cpu()].T  # (M, L)
    preds = records.preds.cpu()
    rows = []
    for lvl, n in enumerate(h.level_sizes):  # counted per level (two bincounts), not per node: O(M + N)
        known = truth[:, lvl] >= 0
        support = torch.bincount(truth[known, lvl], minlength=n)
        correct = torch.bincount(truth[known & (preds[:, lvl] == truth[:, lvl]), lvl], minlength=n)
        accuracy = correct.double() / support.double()  # nan where a class has no support
        for local, name in enumerate(h.levels[lvl]):
            rows.append(
                {
                    "node": name,
                    "level": lvl + 1,
                    "support": int(support[local]),
                    "accuracy": float(accuracy[local]),
                }
            )
    return rows


def write_per_class(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["node", "level", "support", "accuracy"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def confusion_matrix(records: SampleRecords, h: Hierarchy, level: int) -> torch.Tensor:
    """(n_l, n_l) counts of level ``level`` (1-based): rows the true class, columns the predicted one, over the
    samples whose label is at that level or finer."""
    truth = h.ancestor_at_level[level - 1, records.target.cpu()]
    preds = records.preds.cpu()[:, level - 1]
    known = truth >= 0
    n = h.level_sizes[level - 1]
    matrix = torch.zeros(n, n, dtype=torch.long)
    matrix.index_put_(
        (truth[known], preds[known]), torch.ones(int(known.sum()), dtype=torch.long), accumulate=True
    )
    return matrix


def confusion_figure(matrix: torch.Tensor, names: list[str], level: int):
    """A confusion matrix as a :class:`matplotlib.figure.Figure` (no pyplot: the caller's backend stays as it is),
    with a colour bar of the counts and a title that fits the figure."""
    from matplotlib.figure import Figure

    n = len(names)
    size = min(4 + n * 0.12, 24)
    fig = Figure(
        figsize=(size + 1.0, size), layout="constrained"
    )  # constrained layout keeps the title inside
    ax = fig.subplots()
    image = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    ax.set_title(f"level {level}: {n} classes\nrows: truth, columns: prediction", fontsize=9)
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    ax.set_xlabel("prediction", fontsize=8)
    ax.set_ylabel("truth", fontsize=8)
    return fig


CONFUSION_MAX_CLASSES = 2_000
"""Levels with more classes get no ``confusion_l{l}.png``: an (n, n) matrix too big to hold or to read."""


def write_confusions(run_dir: Path, records: SampleRecords, h: Hierarchy) -> list[Path]:
    """``confusion_l{l}.png``, a confusion matrix per level of at most :data:`CONFUSION_MAX_CLASSES` classes,
    written atomically; returns the files written."""
    out = []
    for lvl in range(1, h.num_levels + 1):
        if h.level_sizes[lvl - 1] > CONFUSION_MAX_CLASSES:
            continue
        fig = confusion_figure(confusion_matrix(records, h, lvl), h.levels[lvl - 1], lvl)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        path = run_dir / f"confusion_l{lvl}.png"
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out


THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20)) + (0.99,)
"""The thresholds of ``specificity.csv``: 0, 0.05, ..., 0.95 and 0.99."""


def specificity_rows(records: SampleRecords, h: Hierarchy, thresholds=THRESHOLDS) -> list[dict]:
    """Correctness against specificity (``specificity.csv``): for each threshold, the hierarchical precision,
    recall and F1 of the predictions at it, the share of samples whose prediction stops at each level (``stop_l0``:
    no prediction), and the accuracy of the predicted nodes (a node is right when it is the label or one of its
    ancestors), over the samples with a prediction."""
    path, probs = records.path.cpu(), records.path_probs.cpu()
    truth = h.ancestor_at_level[:, records.target.cpu()].T  # (M, L)
    known = truth >= 0
    match = true_prefix(path, truth, known, torch.tensor(h.offsets))
    rows = []
    for tau in thresholds:
        _, depth = confident_prediction(path, probs, tau)
        precision, recall, f1 = hierarchical_prf(depth, match, known.sum(1))
        predicted = depth > 0
        right = (match >= depth) & predicted
        row = {
            "threshold": tau,
            "h_precision": float(precision),
            "h_recall": float(recall),
            "h_f1": float(f1),
        }
        row.update({f"stop_l{lvl}": float((depth == lvl).float().mean()) for lvl in range(h.num_levels + 1)})
        row["node_accuracy"] = float(right.sum() / predicted.sum()) if predicted.any() else float("nan")
        rows.append(row)
    return rows


def write_specificity(run_dir: Path, rows: list[dict], h: Hierarchy) -> list[Path]:
    """``specificity.csv`` (the rows of :func:`specificity_rows`) and ``specificity.png``: hP, hR, hF and the
    node accuracy against the threshold, and where the predictions stop."""
    from matplotlib.figure import Figure

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: round(v, 6) for k, v in row.items()} for row in rows)
    atomic_write_bytes(run_dir / "specificity.csv", buf.getvalue().encode())

    taus = [r["threshold"] for r in rows]
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for key, label in (
        ("h_precision", "hP"),
        ("h_recall", "hR"),
        ("h_f1", "hF"),
        ("node_accuracy", "node accuracy"),
    ):
        left.plot(taus, [r[key] for r in rows], marker=".", label=label)
    left.set_xlabel("threshold (marginal the predicted node must reach)")
    left.set_ylim(0, 1.02)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    stops = [[r[f"stop_l{lvl}"] for r in rows] for lvl in range(h.num_levels + 1)]
    labels = ["none"] + [f"level {lvl}" for lvl in range(1, h.num_levels + 1)]
    right.stackplot(taus, stops, labels=labels, alpha=0.85)
    right.set_xlabel("threshold")
    right.set_ylabel("share of images whose prediction stops at")
    right.set_ylim(0, 1)
    right.legend(fontsize=8, loc="lower left")
    fig.suptitle("correctness against specificity", fontsize=10)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    atomic_write_bytes(run_dir / "specificity.png", out.getvalue())
    return [run_dir / "specificity.csv", run_dir / "specificity.png"]
