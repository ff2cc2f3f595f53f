"""hrn: the Hierarchical Residual Network (Chen, Wang, Liu, Qian, CVPR 2022) for hierarchical multi-granularity
classification, on PyTorch Lightning.

The library: the label tree and its probabilities (:mod:`hrn.tree`), networks on a trunk (:mod:`hrn.nets`), losses
(:mod:`hrn.losses`), metrics (:mod:`hrn.metrics`), data (:mod:`hrn.data`), training (:mod:`hrn.training`, the
only part on Lightning), checkpoints (:mod:`hrn.checkpoints`) and deployment (:mod:`hrn.deploy`), explanations
(:mod:`hrn.explain`), sweep reports (:mod:`hrn.reports`) and benchmarks (:mod:`hrn.benchmarks`). The commands
(``python -m hrn.train`` ...) and their Hydra layer (:mod:`hrn.cli`) sit on top.
"""

from hrn.checkpoints import LoadedModel, load_checkpoint
from hrn.errors import HRNError
from hrn.losses import CompositeLoss, TreeLoss
from hrn.nets import HRN, HRNOutput
from hrn.tree import Hierarchy, HierarchyError, TreeProbabilities

__all__ = [
    "HRN",
    "CompositeLoss",
    "HRNError",
    "HRNOutput",
    "Hierarchy",
    "HierarchyError",
    "LoadedModel",
    "TreeLoss",
    "TreeProbabilities",
    "load_checkpoint",
]
__version__ = "0.2.0"
