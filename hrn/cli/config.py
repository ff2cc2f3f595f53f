"""The Hydra configs: where they are, and the settings an experiment applies at one relabel ratio only."""

from __future__ import annotations

import logging
import math
from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

__all__ = ["CONF_DIR", "apply_ratio_settings"]

log = logging.getLogger(__name__)

# The configs live in conf/ at the top of a checkout and ship inside the wheel as the package hrn.conf (pyproject.toml
# maps one to the other), so an installed hrn finds them anywhere; a user's own folder composes on top with
# --config-dir.
CONF_DIR = str(files("hrn.conf"))


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
    ``conf/experiment/paper_base.yaml`` says so there, and a sweep over ratios picks it up by itself.
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
