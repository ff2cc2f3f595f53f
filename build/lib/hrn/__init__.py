"""hrn: the Hierarchical Residual Network (Chen, Wang, Liu, Qian, CVPR 2022) for hierarchical multi-granularity
classification, on PyTorch Lightning."""

from hrn.errors import HRNError
from hrn.hierarchy import Hierarchy, HierarchyError
from hrn.losses import CompositeLoss, TreeLoss
from hrn.model import HRN, HRNOutput

__all__ = ["HRN", "HRNOutput", "Hierarchy", "HierarchyError", "HRNError", "TreeLoss", "CompositeLoss"]
__version__ = "0.1.0"
