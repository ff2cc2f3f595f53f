"""``python -m hrn.evaluate ckpt_path=PATH [split=val] [dataset overrides]``: the paper's table from a checkpoint.

Runs the test split (or ``split=val``) of the dataset the checkpoint was trained on (or the one given) and writes
in its run directory:

- ``metrics.json``: the flat metrics, ``test/acc_l1`` ... ``test/num_samples`` (prefix = the split);
- ``predictions.npz``: ``scores`` (M, N) as used for ``ap_micro``, ``targets`` (M, N) multi-hot (label and
  ancestors), ``preds`` (M, L) per-level predictions, ``paths`` (M,);
- ``per_class.csv``: per node, its level, support and accuracy;
- ``confusion_l{l}.png``: a confusion matrix per level.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hrn.app import CONF_DIR, load_checkpoint, report_errors
from hrn.data.base import DataError, DataSplits
from hrn.hierarchy import Hierarchy
from hrn.io import atomic_write_bytes, write_json
from hrn.metrics import SampleRecords
from hrn.train import level_table

log = logging.getLogger(__name__)


def dataset_config(cfg: DictConfig, meta: dict) -> dict:
    """The checkpoint's dataset config with the non-null keys of ``cfg.dataset`` laid over it, or ``cfg.dataset``
    itself when it names a dataset (``dataset=cub ...``)."""
    given = OmegaConf.to_container(cfg.dataset, resolve=True)
    if given.get("_target_"):
        return given
    stored = dict(meta.get("dataset") or {})
    if not stored:
        raise DataError("the checkpoint records no dataset; name one: dataset=<name> dataset.root=...")
    for key, value in given.items():
        if value is None:
            continue
        if key not in stored:
            raise DataError(
                f"dataset.{key}: not a setting of the checkpoint's dataset "
                f"({', '.join(k for k in stored if k != '_target_')})"
            )
        stored[key] = value
    return stored


def check_same_tree(data: DataSplits, trained: Hierarchy) -> None:
    if data.hierarchy != trained:
        raise DataError(
            f"the {data.name} dataset's tree (levels {data.hierarchy.level_sizes}) differs from the checkpoint's "
            f"(levels {trained.level_sizes}); evaluate on the dataset the checkpoint was trained on"
        )


def write_predictions(path: Path, records: SampleRecords, h: Hierarchy, paths: list[str]) -> None:
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


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; returns the flat metrics (also in ``metrics.json``)."""
    if cfg.split not in ("test", "val"):
        raise DataError(f"split={cfg.split!r}: expected 'test' or 'val'")
    module, meta = load_checkpoint(cfg.ckpt_path)
    data: DataSplits = instantiate(dataset_config(cfg, meta))
    check_same_tree(data, module.hierarchy)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    images = getattr(data, cfg.split)
    results = trainer.test(module, data.loader(cfg.split), verbose=False)
    metrics = {k.replace("test/", f"{cfg.split}/", 1): float(v) for k, v in results[0].items()}
    if trainer.is_global_zero:
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        records = module.eval_metrics["test"].records
        paths = [images.paths[i] for i in records.index.tolist()] if (records.index >= 0).all() else []
        write_json(run_dir / "metrics.json", metrics)
        write_predictions(run_dir / "predictions.npz", records, data.hierarchy, paths)
        write_per_class(run_dir / "per_class.csv", per_class_rows(records, data.hierarchy))
        write_confusions(run_dir, records, data.hierarchy)
        print(level_table(metrics, data.hierarchy.level_sizes, stage=cfg.split))
        for key in ("ap_micro", "full_path_acc", "consistency", "mistake_severity", "num_samples"):
            print(f"{key:<20}{metrics[f'{cfg.split}/{key}']:>10.4f}")
        print(f"wrote {run_dir}/metrics.json, predictions.npz, per_class.csv, confusion_l*.png")
    return metrics


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    evaluate(cfg)


if __name__ == "__main__":
    main()
