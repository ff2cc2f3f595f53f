"""hrn: the Hierarchical Residual Network (Chen, Wang, Liu, Qian, CVPR 2022) for hierarchical multi-granularity
classification, on PyTorch Lightning.

The library: the label tree and its probabilities (:mod:`hrn.tree`), networks on a trunk (:mod:`hrn.nets`), losses
(:mod:`hrn.losses`), metrics (:mod:`hrn.metrics`), data (:mod:`hrn.data`), training (:mod:`hrn.training`, the
only part on Lightning), trained models (:mod:`hrn.description`, :mod:`hrn.trained`), checkpoints and the share
folder (:mod:`hrn.checkpoints`, :mod:`hrn.share`), calibration (:mod:`hrn.calibration`), deployment
(:mod:`hrn.deploy`), explanations (:mod:`hrn.explain`), sweep reports (:mod:`hrn.reports`) and benchmarks
(:mod:`hrn.benchmarks`). The commands (``python -m hrn.train`` ..., one file each) and what they share
(:mod:`hrn.cli`) sit on top.
"""

from __future__ import annotations

import importlib

from hrn.version import __version__

# The public names, each from its module, imported on first use (PEP 562): `import hrn.reports` or `import
# hrn.errors` must not load torch, and no submodule ever sees this package half-initialised.
_EXPORTS = {
    "HRN": "hrn.nets",
    "CompositeLoss": "hrn.losses",
    "HRNError": "hrn.errors",
    "HRNOutput": "hrn.nets",
    "Hierarchy": "hrn.tree",
    "HierarchyError": "hrn.tree",
    "LoadedModel": "hrn.checkpoints",
    "ModelDescription": "hrn.description",
    "TreeLoss": "hrn.losses",
    "TreeProbabilities": "hrn.tree",
    "load_checkpoint": "hrn.checkpoints",
}
__all__ = [
    "HRN",
    "CompositeLoss",
    "HRNError",
    "HRNOutput",
    "Hierarchy",
    "HierarchyError",
    "LoadedModel",
    "ModelDescription",
    "TreeLoss",
    "TreeProbabilities",
    "__version__",
    "load_checkpoint",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'hrn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
