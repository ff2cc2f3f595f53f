"""What the entry points (``hrn.train``, ``hrn.inspect``, ...) share: config -> data, model and run files.

Entry-point layer: it may import Hydra and OmegaConf; nothing below it does.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hrn.data.base import DataSplits, apply_protocols
from hrn.errors import HRNError

__all__ = [
    "apply_ratio_settings",
    "build_data",
    "build_module",
    "load_checkpoint",
    "report_errors",
    "CONF_DIR",
]

log = logging.getLogger(__name__)

# The Hydra configs ship inside the package (hrn/conf/, package data), so a wheel installed anywhere finds them;
# a user's own folder composes on top with --config-dir.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


def _overlay(base: dict, over: dict) -> None:
    """Merge ``over`` into ``base`` in place; a node with a ``_target_`` replaces the old node whole (another
    class takes other arguments: StepLR has no T_max)."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and "_target_" not in value:
            _overlay(base[key], value)
        else:
            base[key] = value


def apply_ratio_settings(cfg: DictConfig) -> DictConfig:
    """Settings that an experiment applies only at one relabel ratio, under ``at_relabel_ratio.<ratio>``.

    The authors train differently at relabel ratio 0.9 (lr 1e-4 for all layers, StepLR(60, 0.1), 100 epochs):
    ``hrn/conf/experiment/paper_*.yaml`` say so there, and a sweep over ratios picks it up by itself.
    """
    cases = cfg.get("at_relabel_ratio") or {}
    match = [k for k in cases if math.isclose(float(k), float(cfg.relabel_ratio))]
    if not match:
        return cfg
    container = OmegaConf.to_container(cfg, resolve=False)
    _overlay(container, container["at_relabel_ratio"][match[0]])
    log.info(
        "relabel_ratio=%s: applying the experiment's settings for this ratio: %s",
        cfg.relabel_ratio,
        OmegaConf.to_yaml(cases[match[0]]).strip().replace("\n", "; "),
    )
    return OmegaConf.create(container)


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


MODULE_KEYS = ("optimizer", "scheduler", "compile")  # keys of cfg.model for training, not the network


def net_config(cfg: DictConfig) -> dict:
    """The network's part of ``cfg.model`` (``_target_`` and its arguments) as a plain dict."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {k: v for k, v in model.items() if k not in MODULE_KEYS}


def build_module(cfg: DictConfig, data: DataSplits):
    """The LightningModule for ``cfg`` on ``data``'s tree: net, loss, optimiser and scheduler from the config."""
    from hrn.lit import HRNModule  # Lightning is imported only where a module is built

    h = data.hierarchy
    net_cfg = net_config(cfg)
    net = instantiate(net_cfg, hierarchy=h)
    loss = instantiate(cfg.loss, hierarchy=h)
    scheduler = instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None
    description = {
        "net": net_cfg,
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),
        "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
        "data": {"name": data.name, **data.info},
    }
    return HRNModule(
        net,
        loss,
        h,
        instantiate(cfg.model.optimizer),
        scheduler,
        description=description,
        compile=bool(cfg.model.get("compile", False)),
    )


class CheckpointError(HRNError):
    """A checkpoint that is missing, unreadable or not written by ``hrn.train``."""


def read_checkpoint(path: str | Path) -> dict:
    """Read an HRN checkpoint (a dict with ``state_dict`` and the ``hrn`` self-description), or raise one line:
    missing, unreadable (truncated, not PyTorch) or foreign."""
    import torch

    from hrn.lit import CHECKPOINT_KEY

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(
            f"ckpt_path={path}: cannot read the checkpoint ({type(e).__name__}); the file is truncated or not a "
            "PyTorch checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"ckpt_path={path}: not an HRN checkpoint (no '{CHECKPOINT_KEY}' entry); use one written by hrn.train"
        )
    return ckpt


def load_checkpoint(path: str | Path):
    """Rebuild the LightningModule of an HRN checkpoint from the checkpoint alone (tree, net, loss, weights).

    Returns ``(module, meta)``: the module in eval mode and the checkpoint's self-description (``meta["tree"]``,
    ``meta["net"]``, ``meta["dataset"]``, ``meta["data"]`` with the transform sizes).
    """
    import torch

    from hrn.hierarchy import Hierarchy
    from hrn.lit import CHECKPOINT_KEY, HRNModule

    ckpt = read_checkpoint(path)
    meta = ckpt[CHECKPOINT_KEY]
    h = Hierarchy.from_dict(meta["tree"])
    net_cfg = dict(meta["net"])
    # the checkpoint's weights replace any download or weights file the run started from
    net_cfg.update({k: v for k, v in {"pretrained": False, "weights": None}.items() if k in net_cfg})
    net = instantiate(net_cfg, hierarchy=h)
    loss = instantiate(meta.get("loss") or {"_target_": "hrn.losses.CompositeLoss"}, hierarchy=h)
    module = HRNModule(net, loss, h, optimizer=functools.partial(torch.optim.SGD, lr=0.0), description=meta)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"ckpt_path={path}: weights do not fit the network it describes ({first})"
        ) from None
    return module.eval(), meta


def report_errors(fn: Callable) -> Callable:
    """Turn the package's own errors into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, HRNError):  # Hydra's instantiate wraps errors
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            print(f"hrn: error: {cause}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
