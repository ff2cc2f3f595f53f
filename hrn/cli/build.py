"""The library's objects from a composed config, for every command that builds them: the data with its protocols
(and, for a checkpoint, the dataset it was trained on), the LightningModule (network, loss, optimiser, scheduler),
the loggers, callbacks and Trainer, and the float32 matmul precision of a run."""

from __future__ import annotations

import importlib.util
import logging

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hrn.data.base import DataError, DataSplits
from hrn.data.protocols import apply_protocols
from hrn.description import ModelDescription
from hrn.errors import HRNError
from hrn.metrics.hierarchical import check_threshold
from hrn.nets.weights import first_line
from hrn.trained import describe_network
from hrn.tree import Hierarchy
from hrn.version import __version__

__all__ = [
    "LOGGER_PACKAGES",
    "MATMUL_PRECISIONS",
    "MissingPackageError",
    "SettingError",
    "apply_matmul_precision",
    "build_callbacks",
    "build_data",
    "build_loggers",
    "build_module",
    "build_trainer",
    "check_same_tree",
    "checkpoint_data",
    "dataset_config",
    "resolve_matmul_precision",
]


class MissingPackageError(HRNError):
    """A selected option needs a package that is not installed."""


log = logging.getLogger(__name__)


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


def dataset_config(cfg: DictConfig, description: ModelDescription) -> dict:
    """The checkpoint's dataset config with the non-null keys of ``cfg.dataset`` laid over it, or ``cfg.dataset``
    itself when it names a dataset (``dataset=cub ...``)."""
    given = OmegaConf.to_container(cfg.dataset, resolve=True)
    if given.get("_target_"):
        return given
    stored = dict(description.dataset or {})
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
    """One line when the dataset's tree is not the one the checkpoint was trained on."""
    if data.hierarchy != trained:
        raise DataError(
            f"the {data.name} dataset's tree (levels {data.hierarchy.level_sizes}) differs from the checkpoint's "
            f"(levels {trained.level_sizes}); evaluate on the dataset the checkpoint was trained on"
        )


def checkpoint_data(cfg: DictConfig, model) -> DataSplits:
    """The dataset a loaded model (:class:`hrn.checkpoints.LoadedModel`) is evaluated or calibrated on: the one it
    was trained on, with ``cfg.dataset``'s settings laid over it (:func:`dataset_config`), on the same tree."""
    data: DataSplits = instantiate(dataset_config(cfg, model.description))
    check_same_tree(data, model.hierarchy)
    return data


def build_module(cfg: DictConfig, data: DataSplits):
    """The LightningModule for ``cfg`` on ``data``'s tree: the network (``cfg.model``), loss, optimiser and
    scheduler, and the run description its checkpoints carry."""
    from hrn.training import HRNModule  # Lightning is imported only where a module is built

    h = data.hierarchy
    settings = OmegaConf.to_container(cfg.model, resolve=True)
    net = instantiate(settings, hierarchy=h)
    loss = instantiate(cfg.loss, hierarchy=h)
    description = ModelDescription(
        tree=h,
        net=describe_network(net, settings),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        tree_scores=loss.tree_scores,
        data={"name": data.name, **data.info},
        dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
        version=__version__,
    )
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
    check_trainer_keys(cfg.trainer)
    try:  # apart from the Trainer's own refusal, so a callback that cannot be built is not blamed on the Trainer
        callbacks = build_callbacks(cfg)
    except HRNError:
        raise
    except Exception as e:  # noqa: BLE001 - a callback's _target_ or arguments, wrapped by Hydra's instantiate
        raise SettingError(f"callbacks: cannot build them: {_innermost(e)}") from None
    # _convert_="partial": the lists reach the Trainer as lists, not OmegaConf ListConfigs (Lightning 2.4 takes a
    # ListConfig of plugins for one plugin of an unknown type)
    try:
        return instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            plugins=[AtomicCheckpointIO()],
            _convert_="partial",
            **compiled,
        )
    except HRNError:
        raise
    except Exception as e:  # noqa: BLE001 - Lightning refuses a setting with its own error types
        raise SettingError(f"trainer: Lightning's Trainer refuses the settings: {_innermost(e)}") from None


def check_trainer_keys(trainer: DictConfig) -> None:
    """One line, with the closest names, for a ``trainer.<key>`` Lightning's Trainer has no argument of."""
    import difflib
    import inspect

    from lightning.pytorch import Trainer

    known = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        if key != "_target_" and key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SettingError(f"trainer.{key}: not an argument of Lightning's Trainer{hint}")


def _innermost(e: BaseException) -> str:
    """The first line of the error behind Hydra's wrapping of it."""
    while e.__cause__ is not None:
        e = e.__cause__
    return first_line(e)


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
