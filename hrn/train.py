"""``python -m hrn.train [overrides]``: train, test with the best checkpoint, print a per-level table and write
``metrics.json`` in the run directory (beside ``checkpoints/`` and the CSV logs ``csv/``)."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from hrn.app import CONF_DIR, apply_ratio_settings, build_data, build_module, read_checkpoint, report_errors
from hrn.errors import HRNError
from hrn.io import write_json
from hrn.lit import AtomicCheckpointIO

log = logging.getLogger(__name__)

# Our checkpoints also hold the random-generator states and the run description, which torch's weights_only=True
# (its default from torch 2.6) refuses. Lightning >= 2.6 follows that default unless told otherwise; older
# Lightning always loads everything and has no such argument.
FULL_LOAD = {"weights_only": False} if "weights_only" in inspect.signature(L.Trainer.fit).parameters else {}


def level_table(metrics: dict[str, float], level_sizes: list[int], stage: str = "test") -> str:
    """A plain-text table of per-level accuracy, coarse -> fine."""
    rows = [f"{'level':<8}{'classes':>8}{'accuracy':>10}"]
    for lvl, n in enumerate(level_sizes, start=1):
        rows.append(f"{lvl:<8}{n:>8}{metrics.get(f'{stage}/acc_l{lvl}', float('nan')):>10.4f}")
    if f"{stage}/acc_leaf_sigmoid" in metrics:
        rows.append(f"{'leaf (sigmoid head)':<16}{metrics[f'{stage}/acc_leaf_sigmoid']:>10.4f}")
    return "\n".join(rows)


class MissingPackageError(HRNError):
    """A selected option needs a package that is not installed."""


# The package each logger config needs beyond Lightning: the modules that provide it (any one will do) and what to
# install. Lightning imports them only when the logger is built; we check first, so a missing one is one line.
LOGGER_PACKAGES = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tensorboard"),
    "MLFlowLogger": (("mlflow",), "mlflow"),
    "WandbLogger": (("wandb",), "wandb"),
}


def build_loggers(cfg: DictConfig) -> list:
    """The loggers of ``cfg.logger`` (none, one or several: ``logger=[csv,tensorboard]``), after checking that the
    library each one needs is installed."""
    chosen = cfg.get("logger") or {}
    for name, node in chosen.items():
        modules, pip_name = LOGGER_PACKAGES.get(str(node.get("_target_", "")).rsplit(".", 1)[-1], ((), ""))
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise MissingPackageError(f"logger={name} needs the '{pip_name}' package: pip install {pip_name}")
    return [instantiate(node) for node in chosen.values()]


def build_callbacks(cfg: DictConfig) -> list:
    """The callbacks of ``cfg.callbacks``. With ``trainer.enable_progress_bar=false`` the progress-bar callback is
    left out: Lightning refuses the two together, and the trainer's switch is the one a user reaches for."""
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def keep_csv_logs(loggers: list) -> None:
    """Lightning's CSV logger starts its metrics.csv afresh; when a run resumes, keep the rows logged before the
    crash under another name instead of losing them."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            old = Path(logger.log_dir) / "metrics.csv"
            if old.is_file():
                old.rename(old.with_name(f"metrics-before-resume-{time.strftime('%Y%m%d-%H%M%S')}.csv"))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one run described by ``cfg``; returns the flat test metrics (also in ``metrics.json``)."""
    cfg = apply_ratio_settings(cfg)
    loggers = build_loggers(cfg)  # first: a missing logger library stops the run before any work
    L.seed_everything(cfg.seed, workers=True)
    data = build_data(cfg)
    module = build_module(cfg, data)
    # _convert_="partial": the lists reach the Trainer as lists, not OmegaConf ListConfigs (Lightning 2.4 takes a
    # ListConfig of plugins for one plugin of an unknown type)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=build_callbacks(cfg),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="partial",
    )

    resume = cfg.get("ckpt_path")
    if resume not in (None, "last"):
        read_checkpoint(resume)  # one clear line for a missing, truncated or foreign file, before training
    if resume is not None:
        keep_csv_logs(loggers)
    trainer.fit(module, data.loader("train"), data.loader("val"), ckpt_path=resume, **FULL_LOAD)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(module, data.loader("test"), ckpt_path=best or None, **FULL_LOAD)
    metrics = {k: float(v) for k, v in results[0].items()}
    if trainer.is_global_zero:  # every process holds the same (gathered) metrics; one writes them
        write_json(Path(cfg.run_dir) / "metrics.json", metrics)
        print(level_table(metrics, data.hierarchy.level_sizes))
        print(
            f"metrics: {Path(cfg.run_dir) / 'metrics.json'}" + (f"  best checkpoint: {best}" if best else "")
        )
    return metrics


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
