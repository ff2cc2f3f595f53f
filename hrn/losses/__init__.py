"""Losses over a label tree: the paper's tree loss and composite objective (:mod:`~hrn.losses.tree`,
:mod:`~hrn.losses.paper`), the losses the paper compares with on its network (:mod:`~hrn.losses.paper`) and those
of the compared methods (:mod:`~hrn.losses.compared`). Each is ``loss(output, targets) -> LossTerms`` and says
where its network's node probabilities come from (:class:`HierarchicalLoss`)."""

from hrn.losses.base import HierarchicalLoss, LossError, LossTerms
from hrn.losses.compared import ChangLoss, HMCLMLPLoss, HMCNFLoss, MCLoss
from hrn.losses.paper import CoarseConstraintLoss, CompositeLoss, LeafCELoss, PerLevelCELoss
from hrn.losses.tree import DENSE_MAX_NODES, Formulation, TreeLoss

__all__ = [
    "DENSE_MAX_NODES",
    "ChangLoss",
    "CoarseConstraintLoss",
    "CompositeLoss",
    "Formulation",
    "HMCLMLPLoss",
    "HMCNFLoss",
    "HierarchicalLoss",
    "LeafCELoss",
    "LossError",
    "LossTerms",
    "MCLoss",
    "PerLevelCELoss",
    "TreeLoss",
]
