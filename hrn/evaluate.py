"""``python -m hrn.evaluate ckpt_path=PATH [split=val] [probabilities=tree|leaf|mix|heads] [dataset overrides]``: the
paper's table from a checkpoint, on the test split (or ``split=val``) of the dataset the checkpoint was trained on
(or the one given), the marginal metrics from the tree marginals (or ``probabilities=leaf|mix``). Writes in the
run directory:

- ``metrics.json``: the flat metrics, ``test/acc_l1`` ... ``test/num_samples`` (prefix = the split);
- ``predictions.npz``: ``target`` (M,) the labels, ``scores`` (M, N) as used for ``ap_micro`` and ``targets``
  (M, N) multi-hot (label and ancestors), both (M, 0) for a tree over ``ap_max_nodes``, ``preds`` (M, L)
  per-level predictions, ``node`` (M,) the node predicted at ``threshold``, ``path`` and ``path_probs`` (M, L),
  ``paths`` (M,);
- ``per_class.csv``: per node, its level, support and accuracy;
- ``confusion_l{l}.png``: a confusion matrix per level (of at most 2,000 classes);
- ``specificity.csv`` and ``specificity.png``: hP, hR, hF, where the predictions stop and their accuracy, for a
  grid of thresholds: the picture to choose a threshold from.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from hrn.atomic import write_json
from hrn.checkpoints import load_checkpoint
from hrn.cli.build import check_trainer_keys, checkpoint_data
from hrn.cli.config import CONF_DIR
from hrn.cli.entry import run_command
from hrn.cli.errors import report_errors
from hrn.data.base import DataError
from hrn.errors import HRNError
from hrn.metrics import level_table
from hrn.metrics.hierarchical import check_threshold
from hrn.metrics.outputs import (
    CONFUSION_MAX_CLASSES,
    per_class_rows,
    specificity_rows,
    write_confusions,
    write_per_class,
    write_predictions,
    write_specificity,
)

__all__ = ["SUMMARY", "evaluate", "main"]

SUMMARY = (
    "ap_micro", "full_path_acc", "consistency", "tice", "wap", "mistake_severity", "hdist_at5",
    "h_precision", "h_recall", "h_f1", "num_samples",
)  # fmt: skip
"""The metrics ``hrn.evaluate`` prints below its per-level table."""


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; returns the flat metrics (also in ``metrics.json``)."""
    if cfg.split not in ("test", "val"):
        raise DataError(f"split={cfg.split!r}: expected 'test' or 'val'")
    from hrn.training import HRNModule  # Lightning is imported only where a module is built
    from hrn.training.callbacks import StderrProgressBar

    model = load_checkpoint(cfg.ckpt_path, bool(cfg.get("trust_checkpoint", False)))
    data = checkpoint_data(cfg, model)
    threshold = check_threshold(cfg.get("threshold", 0.0))
    module = HRNModule(
        model.net,
        model.build_loss(),
        model.hierarchy,
        description=model.description,
        threshold=threshold,
        calibration=model.calibration,
        probabilities=str(cfg.get("probabilities", "tree")),
    )
    check_trainer_keys(cfg.trainer)
    bar = [StderrProgressBar()] if cfg.trainer.get("enable_progress_bar", True) is not False else []
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, callbacks=bar)
    images = getattr(data, cfg.split)
    results = trainer.test(module, data.loader(cfg.split), verbose=False)
    metrics = {k.replace("test/", f"{cfg.split}/", 1): float(v) for k, v in results[0].items()}
    if trainer.is_global_zero:
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        records = module.eval_metrics["test"].records
        if records is None:  # the test ran in processes of their own (a spawning or forking launcher)
            raise HRNError(
                f"trainer.strategy={cfg.trainer.get('strategy')}: hrn.evaluate writes what it gathered in this "
                "process, and this strategy evaluated in spawned or forked ones; use trainer=ddp_cpu or trainer=ddp"
            )
        paths = [images.paths[i] for i in records.index.tolist()] if (records.index >= 0).all() else []
        write_json(run_dir / "metrics.json", metrics)
        write_predictions(run_dir / "predictions.npz", records, data.hierarchy, paths)
        write_per_class(run_dir / "per_class.csv", per_class_rows(records, data.hierarchy))
        confusions = write_confusions(run_dir, records, data.hierarchy)
        write_specificity(run_dir, specificity_rows(records, data.hierarchy), data.hierarchy)
        print(level_table(metrics, data.hierarchy.level_sizes, stage=cfg.split))
        for key in SUMMARY:
            if f"{cfg.split}/{key}" in metrics:  # ap_micro is left out above ap_max_nodes nodes
                print(f"{key:<24}{metrics[f'{cfg.split}/{key}']:>10.4f}")
        print(
            f"at threshold {threshold:g}: hierarchical precision, recall and F1 of the deepest confident node"
        )
        skipped = data.hierarchy.num_levels - len(confusions)
        too_big = f" (none for {skipped} levels of over {CONFUSION_MAX_CLASSES:,} classes)" if skipped else ""
        print(
            f"wrote {run_dir}/metrics.json, predictions.npz, per_class.csv, {len(confusions)} confusion_l*.png"
            f"{too_big}, specificity.csv, specificity.png"
        )
    return metrics


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    evaluate(cfg)


if __name__ == "__main__":
    run_command(main, "evaluate", __doc__)
