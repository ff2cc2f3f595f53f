"""What ``hrn.evaluate`` and ``hrn.train`` write and print from a split's metrics: the per-sample predictions, the
per-class table, a confusion matrix per level and the per-level accuracy table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from hrn.atomic import atomic_write_bytes
from hrn.metrics.hierarchical import SampleRecords
from hrn.tree import Hierarchy

__all__ = ["level_table", "per_class_rows", "write_confusions", "write_per_class", "write_predictions"]


def level_table(metrics: dict[str, float], level_sizes: list[int], stage: str = "test") -> str:
    """A plain-text table of per-level accuracy, coarse -> fine."""
    rows = [f"{'level':<8}{'classes':>8}{'accuracy':>10}"]
    for lvl, n in enumerate(level_sizes, start=1):
        rows.append(f"{lvl:<8}{n:>8}{metrics.get(f'{stage}/acc_l{lvl}', float('nan')):>10.4f}")
    if f"{stage}/acc_leaf_sigmoid" in metrics:
        rows.append(f"{'leaf (sigmoid head)':<16}{metrics[f'{stage}/acc_leaf_sigmoid']:>10.4f}")
    return "\n".join(rows)


def write_predictions(path: Path, records: SampleRecords, h: Hierarchy, paths: list[str]) -> None:
    """``predictions.npz``: ``scores`` (M, N) as used for ``ap_micro``, ``targets`` (M, N) multi-hot (label and
    ancestors), ``preds`` (M, L) per-level predictions, ``paths`` (M,)."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        scores=records.scores.cpu().numpy(),
        targets=h.ancestors[records.target.cpu()].numpy().astype(np.uint8),
        preds=records.preds.cpu().numpy(),
        paths=np.array(paths),
    )
    atomic_write_bytes(path, buf.getvalue())


def per_class_rows(records: SampleRecords, h: Hierarchy) -> list[dict]:
    """Per node: its level, support (samples whose label implies it) and accuracy at its level."""
    truth = h.ancestor_at_level[:, records.target.cpu()].T  # (M, L)
    preds = records.preds.cpu()
    rows = []
    for v, name in enumerate(h.names):
        lvl = h.level_of(v)
        local = v - h.offsets[lvl - 1]
        mask = truth[:, lvl - 1] == local
        support = int(mask.sum())
        acc = float((preds[mask, lvl - 1] == local).float().mean()) if support else float("nan")
        rows.append({"node": name, "level": lvl, "support": support, "accuracy": acc})
    return rows


def write_per_class(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["node", "level", "support", "accuracy"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def write_confusions(run_dir: Path, records: SampleRecords, h: Hierarchy) -> list[Path]:
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend (notebooks) alone

    truth = h.ancestor_at_level[:, records.target.cpu()].T
    preds = records.preds.cpu()
    out = []
    for lvl, n in enumerate(h.level_sizes, start=1):
        known = truth[:, lvl - 1] >= 0
        matrix = torch.zeros(n, n, dtype=torch.long)
        matrix.index_put_(
            (truth[known, lvl - 1], preds[known, lvl - 1]),
            torch.ones(int(known.sum()), dtype=torch.long),
            accumulate=True,
        )
        size = min(4 + n * 0.12, 24)
        fig = Figure(figsize=(size, size))
        ax = fig.subplots()
        ax.imshow(matrix.numpy(), cmap="Blues")
        ax.set_title(f"level {lvl}: {n} classes (rows = truth, columns = prediction)")
        if n <= 40:
            names = h.levels[lvl - 1]
            ax.set_xticks(range(n), names, rotation=90, fontsize=7)
            ax.set_yticks(range(n), names, fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        path = run_dir / f"confusion_l{lvl}.png"
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out
