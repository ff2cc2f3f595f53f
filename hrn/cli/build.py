"""The library's objects from a composed config: the data with its protocols, the LightningModule (network, loss,
optimiser, scheduler), the loggers, callbacks and Trainer."""

from __future__ import annotations

import importlib.util

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hrn.checkpoints import describe_network
from hrn.data.base import DataSplits
from hrn.data.protocols import apply_protocols
from hrn.errors import HRNError
from hrn.metrics.hierarchical import check_threshold

__all__ = [
    "LOGGER_PACKAGES",
    "MissingPackageError",
    "build_callbacks",
    "build_data",
    "build_loggers",
    "build_module",
    "build_trainer",
]


class MissingPackageError(HRNError):
    """A selected option needs a package that is not installed."""


def build_data(cfg: DictConfig) -> DataSplits:
    """Instantiate ``cfg.dataset`` and apply the top-level protocols (relabel, degrade) to its training split."""
    data: DataSplits = instantiate(cfg.dataset)
    apply_protocols(
        data,
        relabel_ratio=cfg.relabel_ratio,
        relabel_order=cfg.relabel.order,
        degrade_scale=cfg.degrade.scale,
        degrade_apply_to=cfg.degrade.apply_to,
        seed=cfg.seed,
    )
    return data


def build_module(cfg: DictConfig, data: DataSplits):
    """The LightningModule for ``cfg`` on ``data``'s tree: the network (``cfg.model``), loss, optimiser and
    scheduler, and the run description its checkpoints carry."""
    from hrn.training import HRNModule  # Lightning is imported only where a module is built

    h = data.hierarchy
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    net = instantiate(settings, hierarchy=h)
    loss = instantiate(cfg.loss, hierarchy=h)
    description = {
        "net": describe_network(net, settings),
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "data": {"name": data.name, **data.info},
    }
    return HRNModule(
        net,
        loss,
        h,
        instantiate(cfg.optimizer),
        instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        description=description,
        compile=bool(cfg.get("compile", False)),
        channels_last=bool(cfg.get("channels_last", False)),
        threshold=check_threshold(cfg.get("threshold", 0.0)),
    )


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
    """The callbacks of ``cfg.callbacks``; without the progress bar when ``trainer.enable_progress_bar=false``,
    without checkpoints in a ``trainer.fast_dev_run`` smoke test."""
    from hrn.training.trainer import fitting_callbacks

    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    return fitting_callbacks(
        callbacks, cfg.trainer.get("enable_progress_bar"), cfg.trainer.get("fast_dev_run")
    )


def build_trainer(cfg: DictConfig, loggers: list):
    """Lightning's Trainer of ``cfg.trainer``, with the callbacks, the loggers and atomic checkpoint writes."""
    from hrn.training import AtomicCheckpointIO

    # Lightning validates inside fit under no_grad but tests under inference_mode, whose tensors a compiled
    # network's guards tell apart: test would compile a third graph. no_grad for both keeps the one eval graph.
    compiled = {"inference_mode": False} if cfg.get("compile", False) else {}
    # _convert_="partial": the lists reach the Trainer as lists, not OmegaConf ListConfigs (Lightning 2.4 takes a
    # ListConfig of plugins for one plugin of an unknown type)
    return instantiate(
        cfg.trainer,
        callbacks=build_callbacks(cfg),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        _convert_="partial",
        **compiled,
    )
