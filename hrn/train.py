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
import torch
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

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's values


class SettingError(HRNError):
    """A top-level setting of the train config the package cannot use."""


def resolve_matmul_precision(setting: str, capability: tuple[int, int] | None) -> str | None:
    """The float32 matmul precision for ``matmul_precision=<setting>``, or None to leave torch's own (highest).

    ``auto``: ``high`` (TF32 tensor cores: a 10-bit mantissa for the products, fp32 sums) when training on a CUDA
    device of compute capability 8.0 or more (Ampere and newer), where it speeds up fp32 matmuls several times;
    otherwise unchanged (a CPU, or an older GPU without TF32). ``capability``: the CUDA device's compute
    capability, None when not training on CUDA.
    """
    if setting == "auto":
        return "high" if capability is not None and capability >= (8, 0) else None
    if setting not in MATMUL_PRECISIONS:
        raise SettingError(
            f"matmul_precision={setting!r} is not one of auto, {', '.join(MATMUL_PRECISIONS)}; "
            "auto = high on a CUDA GPU with tensor cores (compute capability >= 8.0), torch's default otherwise"
        )
    return setting


def apply_matmul_precision(cfg: DictConfig) -> None:
    """Set (and log, once) the float32 matmul precision the run asks for (``matmul_precision``)."""
    setting = str(cfg.get("matmul_precision", "auto"))
    on_cuda = str(cfg.trainer.get("accelerator", "auto")) != "cpu" and torch.cuda.is_available()
    capability = torch.cuda.get_device_capability() if on_cuda else None
    precision = resolve_matmul_precision(setting, capability)
    if precision is not None:
        torch.set_float32_matmul_precision(precision)
    log.info(
        "float32 matmul precision: %s (matmul_precision=%s%s)",
        torch.get_float32_matmul_precision(),
        setting,
        f", CUDA compute capability {capability[0]}.{capability[1]}" if capability else ", not on CUDA",
    )


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
    apply_matmul_precision(cfg)
    loggers = build_loggers(cfg)  # first: a missing logger library stops the run before any work
    L.seed_everything(cfg.seed, workers=True)
    data = build_data(cfg)
    module = build_module(cfg, data)
    # Lightning validates inside fit under no_grad but tests under inference_mode, whose tensors a compiled
    # network's guards tell apart: test would compile a third graph. no_grad for both keeps the one eval graph.
    compiled = {"inference_mode": False} if cfg.model.get("compile", False) else {}
    # _convert_="partial": the lists reach the Trainer as lists, not OmegaConf ListConfigs (Lightning 2.4 takes a
    # ListConfig of plugins for one plugin of an unknown type)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=build_callbacks(cfg),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="partial",
        **compiled,
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
