"""One training run from a composed config: what ``python -m hrn.train`` does, and what notebooks, sweeps and the
end-to-end benchmark call (``train(cfg)``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from hrn.atomic import write_json
from hrn.checkpoints import read_checkpoint
from hrn.cli.build import build_data, build_loggers, build_module, build_trainer
from hrn.cli.config import apply_ratio_settings
from hrn.errors import HRNError
from hrn.metrics import level_table

__all__ = ["MATMUL_PRECISIONS", "SettingError", "apply_matmul_precision", "resolve_matmul_precision", "train"]

log = logging.getLogger(__name__)

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


def resume_files(resume: str | None, trainer) -> list[Path]:
    """The checkpoint ``ckpt_path`` names: the file, or for ``last`` the newest ``last*.ckpt`` of the run's
    checkpoint folder (none when there is none yet: Lightning then starts afresh)."""
    if resume is None:
        return []
    if resume != "last":
        return [Path(resume)]
    callback = trainer.checkpoint_callback
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
    found = (
        sorted(folder.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if folder and folder.is_dir()
        else []
    )
    return found[-1:]


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one run described by ``cfg``; returns the flat test metrics (also in ``metrics.json``)."""
    from hrn.training.trainer import fit_and_test, seed_everything

    cfg = apply_ratio_settings(cfg)
    apply_matmul_precision(cfg)
    loggers = build_loggers(cfg)  # first: a missing logger library stops the run before any work
    seed_everything(cfg.seed, workers=True)
    data = build_data(cfg)
    module = build_module(cfg, data)
    trainer = build_trainer(cfg, loggers)
    resume = cfg.get("ckpt_path")
    trust = bool(cfg.get("trust_checkpoint", False))
    for path in resume_files(resume, trainer):
        # before training: one clear line for a missing, truncated or foreign file, or one that would run code
        read_checkpoint(path, trust)
    metrics, best = fit_and_test(trainer, module, data, resume, trust)
    if trainer.is_global_zero:  # every process holds the same (gathered) metrics; one writes them
        write_json(Path(cfg.run_dir) / "metrics.json", metrics)
        print(level_table(metrics, data.hierarchy.level_sizes))
        print(
            f"metrics: {Path(cfg.run_dir) / 'metrics.json'}" + (f"  best checkpoint: {best}" if best else "")
        )
    return metrics
