"""What a trained model says of itself: :class:`ModelDescription`, the one description that training writes into
its checkpoints, that the share folder's ``config.json``, the exports' metadata and calibration carry, and that
loading reads back (validated, one line for anything malformed: :class:`CheckpointError`).

A checkpoint holds it under :data:`CHECKPOINT_KEY` as plain data (names, numbers, lists, dicts), which torch's
safe unpickler and JSON both read; :meth:`ModelDescription.to_dict` writes the layout of hrn 0.2, plus the
version that wrote it, so checkpoints of either version load.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from hrn.errors import HRNError
from hrn.tree import Hierarchy, HierarchyError
from hrn.tree.probabilities import TREE_SCORES
from hrn.version import __version__

__all__ = ["CHECKPOINT_KEY", "RNG_KEY", "CheckpointError", "ModelDescription"]

CHECKPOINT_KEY = "hrn"
"""The checkpoint's self-description lives under this key."""
RNG_KEY = "hrn_rng"
"""Python, NumPy and torch random states at save time, restored when training resumes (:mod:`hrn.training`)."""


class CheckpointError(HRNError):
    """A checkpoint (or shared folder) that is missing, unreadable, malformed or not written by ``hrn``."""


def _fail(where: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: the model description is malformed: {what}")


def _mapping(d: Mapping, key: str, where: str, required: bool = False) -> dict | None:
    value = d.get(key)
    if value is None:
        if required:
            raise _fail(where, f"no '{key}'")
        return None
    if not isinstance(value, Mapping):
        raise _fail(where, f"'{key}' must be a mapping, got {type(value).__name__}")
    return dict(value)


def _size(data: Mapping, key: str, where: str) -> None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise _fail(where, f"data.{key} must be a positive whole number of pixels, got {value!r}")


def _tree(value, where: str) -> Hierarchy:
    """The tree of ``{"levels": [[name, ...], ...], "parent": [index, ...]}``, checked before it is built."""
    if not isinstance(value, Mapping):
        raise _fail(where, f"'tree' must be a mapping, got {type(value).__name__}")
    levels, parent = value.get("levels"), value.get("parent")
    if not isinstance(levels, list) or not levels or not all(isinstance(lv, list) and lv for lv in levels):
        raise _fail(where, "tree.levels must be a non-empty list of non-empty lists of node names")
    names = [n for level in levels for n in level]
    if not all(isinstance(n, str) for n in names):
        raise _fail(where, "tree.levels must hold node names (strings)")
    if not isinstance(parent, list) or len(parent) != len(names):
        raise _fail(where, f"tree.parent must list one parent index per node ({len(names)})")
    for i, p in enumerate(parent):
        if isinstance(p, bool) or not isinstance(p, int) or not -1 <= p < len(names):
            raise _fail(where, f"tree.parent[{i}] = {p!r} is not a node index (-1 to {len(names) - 1})")
    try:
        return Hierarchy.from_dict({"levels": levels, "parent": parent})
    except HierarchyError as e:
        raise _fail(where, f"tree: {e}") from None


def _temperature(value, what: str, where: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise _fail(where, f"{what} must be a positive finite number, got {value!r}")


def _calibration(value: dict | None, levels: int, where: str) -> dict | None:
    if value is None:
        return None
    tree_t = value.get("tree_temperature")
    if tree_t is not None:
        if not isinstance(tree_t, list) or len(tree_t) != levels:
            raise _fail(
                where, f"calibration.tree_temperature must list {levels} temperatures (one per level)"
            )
        for t in tree_t:
            _temperature(t, "calibration.tree_temperature", where)
    _temperature(value.get("leaf_temperature", 1.0), "calibration.leaf_temperature", where)
    return value


@dataclass(frozen=True)
class ModelDescription:
    """A trained model's self-description: everything but its weights.

    Attributes:
        tree: the label tree, with the node names.
        net: the network's public class path (``_target_``) and the settings it was built with.
        loss: the loss's class path and settings (None: the paper's composite loss).
        tree_scores: where the node probabilities come from (:data:`hrn.tree.TREE_SCORES`); None in checkpoints of
            hrn before 0.2, whose loss says it.
        data: what the training data was: ``name``, the transform sizes ``resize``, ``crop``, ``padding``, and the
            ``protocol`` applied (relabelling, degradation, the training labels' hash).
        dataset: the dataset config it was trained on (None: not recorded).
        calibration: ``hrn.calibrate``'s temperatures (``tree_temperature`` per level, ``leaf_temperature``), or
            None for a model that was not calibrated.
        version: the hrn version that wrote it (None: before 0.3).
    """

    tree: Hierarchy
    net: dict = field(default_factory=dict)
    loss: dict | None = None
    tree_scores: str | None = None
    data: dict = field(default_factory=dict)
    dataset: dict | None = None
    calibration: dict | None = None
    version: str | None = __version__

    @property
    def resize(self) -> int:
        """The test transform's square resize (550 when not recorded, the paper's)."""
        return int(self.data.get("resize", 550))

    @property
    def crop(self) -> int:
        """The test transform's centre crop (448 when not recorded, the paper's)."""
        return int(self.data.get("crop", 448))

    def replace(self, **changes) -> ModelDescription:
        """A copy with some fields changed (``calibration=...``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain data (JSON and the safe unpickler read it), in the layout :meth:`from_dict` reads."""
        out = {
            "tree": self.tree.to_dict(),
            "net": dict(self.net),
            "loss": self.loss,
            "dataset": self.dataset,
            "data": dict(self.data),
            "calibration": self.calibration,
            "hrn_version": self.version,
        }
        if self.tree_scores is not None:
            out["tree_scores"] = self.tree_scores
        return out

    @classmethod
    def from_dict(cls, d, where: str = "checkpoint") -> ModelDescription:
        """Read and validate a description (a checkpoint's :data:`CHECKPOINT_KEY` entry or a shared folder's
        ``config.json``); :class:`CheckpointError` naming ``where`` and the first thing that is wrong."""
        if not isinstance(d, Mapping):
            raise _fail(where, f"expected a mapping, got {type(d).__name__}")
        if "tree" not in d:
            raise _fail(where, "no 'tree'")
        tree = _tree(d["tree"], where)
        net = _mapping(d, "net", where) or {}
        if net and not isinstance(net.get("_target_"), str):
            raise _fail(where, "net._target_ must name the network's class")
        loss = _mapping(d, "loss", where)
        if loss is not None and not isinstance(loss.get("_target_"), str):
            raise _fail(where, "loss._target_ must name the loss's class")
        tree_scores = d.get("tree_scores")
        if tree_scores is not None and tree_scores not in TREE_SCORES:
            raise _fail(where, f"tree_scores must be one of {', '.join(TREE_SCORES)}, got {tree_scores!r}")
        data = _mapping(d, "data", where) or {}
        for key in ("resize", "crop"):
            _size(data, key, where)
        version = d.get("hrn_version")
        if version is not None and not isinstance(version, str):
            raise _fail(where, f"hrn_version must be a string, got {version!r}")
        return cls(
            tree=tree,
            net=net,
            loss=loss,
            tree_scores=tree_scores,
            data=data,
            dataset=_mapping(d, "dataset", where),
            calibration=_calibration(_mapping(d, "calibration", where), tree.num_levels, where),
            version=version,
        )
