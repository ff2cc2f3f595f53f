"""Networks on a trunk: HRN (:mod:`~hrn.nets.hrn`) and the methods the paper compares with
(:mod:`~hrn.nets.compared`), all built on the one trunk builder (:mod:`~hrn.nets.trunks`) and returning an
:class:`HRNOutput`."""

from hrn.nets.compared import CHMCNN, HMCLMLP, HMCNF, ChangNet
from hrn.nets.hrn import HRN
from hrn.nets.output import BaselineOutput, HRNOutput
from hrn.nets.trunks import TRUNKS, ModelError, Trunk, TrunkNetwork, build_trunk

__all__ = [
    "CHMCNN",
    "HMCLMLP",
    "HMCNF",
    "HRN",
    "TRUNKS",
    "BaselineOutput",
    "ChangNet",
    "HRNOutput",
    "ModelError",
    "Trunk",
    "TrunkNetwork",
    "build_trunk",
]
