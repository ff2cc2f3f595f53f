"""The paper's protocols (§4) on a dataset's training split: relabelling a share of each leaf class's images to the
parent, and degrading the resolution of some training images. The validation and test splits are never touched."""

from __future__ import annotations

import hashlib
import math
import os
import random
from collections.abc import Sequence

from hrn.data.base import DataError, DataSplits
from hrn.tree import Hierarchy

__all__ = ["apply_protocols", "check_relabel_ratio", "images_sha256", "kept_count", "relabel"]


def images_sha256(paths: Sequence[str]) -> str:
    """Identifies a set of images (the training split), wherever its folder lies: the SHA-256 of the sorted paths,
    each relative to the folder they all share (a dataset moved elsewhere keeps its identity)."""
    if not paths:
        return hashlib.sha256(b"").hexdigest()
    common = os.path.commonpath(list(paths)) if len(paths) > 1 else os.path.dirname(paths[0])
    names = sorted(os.path.relpath(p, common) if common else p for p in paths)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def check_relabel_ratio(ratio: float) -> float:
    if not isinstance(ratio, int | float) or not 0.0 <= float(ratio) < 1.0:
        raise DataError(
            f"relabel_ratio={ratio!r} is outside [0, 1): it is the share of each leaf class's "
            "training images relabelled to the parent (0 = none; 1 would leave no leaf label)"
        )
    return float(ratio)


def kept_count(n: int, ratio: float) -> int:
    """``ceil(n · (1 - ratio))``, robust to float error: 30 · (1 - 0.7) = 9.000000000000002 must keep 9."""
    return math.ceil(round(n * (1.0 - ratio), 9))


def relabel(
    targets: Sequence[int], hierarchy: Hierarchy, ratio: float, order: str = "file", seed: int = 0
) -> tuple[list[int], list[bool]]:
    """The paper's relabelling protocol (§4): per leaf class, keep the leaf label on ``ceil(n·(1 - ratio))`` of its
    training images and relabel the rest to the leaf's parent (level L - 1).

    Args:
        targets: node index per sample; only leaf-labelled samples take part.
        ratio: ``relabel_ratio`` in [0, 1).
        order: ``"file"`` keeps the first images in list order (the authors' choice, deterministic);
            ``"random"`` keeps a seeded random choice per class.
        seed: seed of the random choice.
    Returns:
        the new targets and, per sample, whether it was relabelled.
    """
    ratio = check_relabel_ratio(ratio)
    if order not in ("file", "random"):
        raise DataError(f"relabel.order={order!r}: expected 'file' (the authors' choice) or 'random'")
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        if hierarchy.is_leaf(t):
            by_class.setdefault(t, []).append(i)
    new = list(targets)
    changed = [False] * len(new)
    rng = random.Random(seed)
    for leaf in sorted(by_class):
        members = by_class[leaf]
        if order == "random":
            members = rng.sample(members, len(members))
        parent = hierarchy.parent_of(leaf)
        for i in members[kept_count(len(members), ratio) :]:
            new[i], changed[i] = parent, True
    return new, changed


def apply_protocols(
    data: DataSplits,
    relabel_ratio: float = 0.0,
    relabel_order: str = "file",
    degrade_scale: float = 1.0,
    degrade_apply_to: str = "relabelled",
    seed: int = 0,
) -> None:
    """Relabel and degrade ``data.train`` in place (paper §4); val and test stay as they are.

    ``degrade_scale < 1`` downsamples the chosen training images (``"relabelled"`` ones or ``"all"``) before the
    usual transforms. Records what it did in ``data.info["protocol"]``.
    """
    if not isinstance(degrade_scale, int | float) or not 0.0 < float(degrade_scale) <= 1.0:
        raise DataError(
            f"degrade.scale={degrade_scale!r} must be in (0, 1] (1 = off; the paper's study uses 0.25)"
        )
    if degrade_apply_to not in ("relabelled", "all"):
        raise DataError(f"degrade.apply_to={degrade_apply_to!r}: expected 'relabelled' or 'all'")
    data.seed = seed
    train = data.train
    train.targets, changed = relabel(train.targets, data.hierarchy, relabel_ratio, relabel_order, seed)
    if degrade_scale < 1.0:
        train.degraded = [True] * len(train) if degrade_apply_to == "all" else list(changed)
        train.degrade_scale = float(degrade_scale)
    data.info["protocol"] = {
        # identifies the training labels, so a resumed run can check it relabelled the same images
        "train_labels_sha256": hashlib.sha256(repr((train.paths, train.targets)).encode()).hexdigest(),
        # identifies the training images, so hrn.calibrate can refuse to fit on any of them
        "train_images_sha256": images_sha256(train.paths),
        "relabel_ratio": float(relabel_ratio),
        "relabel_order": relabel_order,
        "relabelled": sum(changed),
        "degrade_scale": float(degrade_scale),
        "degraded": sum(train.degraded),
    }
