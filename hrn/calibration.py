"""Calibrated tree probabilities: temperature scaling (Guo et al., 2017) of a trained model, fitted on a split.

HRN's marginals are soft by construction (sigmoid scores in (0, 1) give at most a factor e between siblings per
level), so a threshold on them means little as they are. A temperature per level (or one for all) divides the
tree scores before the tree distribution, fitted by the negative log-likelihood of the split's labels under it
(the tree loss, whatever level a label is at); one more divides the leaf logits before their softmax, fitted by
the leaf cross-entropy of the leaf-labelled samples. The network is not touched: the temperatures travel in the
checkpoint's description (``calibration``) and every use of the model's probabilities applies them
(:meth:`hrn.checkpoints.LoadedModel.probabilities`). Methods whose probabilities come from the leaf softmax
(``tree_scores="leaf"``) get the leaf temperature only.

Shapes: M = samples of the split, N = nodes, L = levels, n_L = leaves.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from hrn.atomic import atomic_write_bytes
from hrn.checkpoints import read_checkpoint
from hrn.data.augment import normalize
from hrn.data.base import DataError
from hrn.data.protocols import images_sha256
from hrn.description import CHECKPOINT_KEY, RNG_KEY, CheckpointError, ModelDescription
from hrn.losses import TreeLoss
from hrn.metrics.hierarchical import level_confidence, level_ece
from hrn.nets.output import HRNOutput
from hrn.share import CONFIG, WEIGHTS, config_bytes, write_folder
from hrn.tree import Hierarchy, TreeProbabilities

__all__ = [
    "MIN_IMAGES_PER_CLASS", "TEMPERATURE_BOUNDS", "SplitOutputs", "check_held_out", "collect_outputs",
    "fit_temperatures", "level_report", "minimum_held_out", "save_calibrated",
]  # fmt: skip

log = logging.getLogger(__name__)


@dataclass
class SplitOutputs:
    """A split's network outputs, kept to fit temperatures on: ``scores`` (M, N) the tree scores (the network's
    ``tree_scores``; empty for ``"leaf"``), ``leaf_logits`` (M, n_L), ``targets`` (M,) node indices."""

    scores: torch.Tensor
    leaf_logits: torch.Tensor
    targets: torch.Tensor


def collect_outputs(net, loader, tree_scores: str, device: torch.device) -> SplitOutputs:
    """Run ``net`` over a loader of the package (uint8 :class:`~hrn.data.base.Batch` es) in eval mode."""
    net = net.to(device).eval()
    scores, leaf, targets = [], [], []
    with torch.no_grad():
        for batch in loader:
            output: HRNOutput = net(normalize(batch.images.to(device)))
            if tree_scores != "leaf":  # a leaf-only method's probabilities come from its leaf logits alone
                scores.append(output.scores(tree_scores).float().cpu())
            leaf.append(output.leaf_logits.float().cpu())
            targets.append(batch.targets)
    return SplitOutputs(torch.cat(scores) if scores else torch.zeros(0), torch.cat(leaf), torch.cat(targets))


TEMPERATURE_BOUNDS = (0.05, 20.0)  # beyond them a level is switched off (T -> inf) or made certain (T -> 0)
MIN_IMAGES_PER_CLASS = 10  # a held-out split needs this many images per class, averaged over the levels


def minimum_held_out(hierarchy: Hierarchy) -> int:
    """The fewest held-out images a fit accepts: :data:`MIN_IMAGES_PER_CLASS` per class of the average level."""
    return math.ceil(MIN_IMAGES_PER_CLASS * sum(hierarchy.level_sizes) / hierarchy.num_levels)


def check_held_out(
    train_paths: Sequence[str],
    held_out_paths: Sequence[str],
    recorded: str | None,
    hierarchy: Hierarchy,
    what: str,
) -> None:
    """Raise :class:`~hrn.data.base.DataError` (one line) unless ``held_out_paths`` (``what``: where they come
    from) are images the model never trained on and enough of them to fit on.

    ``train_paths`` are the training split rebuilt from the checkpoint's dataset settings; ``recorded`` is the
    identity of the images it trained on (``data.protocol.train_images_sha256``): when the rebuilt split is not
    that set (another ``val_fraction``, ``split_seed`` or root), the images held out now may have been trained on
    then, and the fit is refused."""
    if recorded is not None and images_sha256(train_paths) != recorded:
        raise DataError(
            f"{what}: the dataset settings give another training split ({len(train_paths)} images) than the one "
            "the model was trained on, so the images held out now may have been trained on; calibrate with the "
            "settings it was trained with (no dataset.val_fraction / split_seed override), or give images it never "
            "saw with labels=FILE"
        )
    seen = {str(Path(p).resolve()) for p in train_paths}
    overlap = [p for p in held_out_paths if str(Path(p).resolve()) in seen]
    if overlap:
        raise DataError(
            f"{what}: {len(overlap)} of its {len(held_out_paths)} images were trained on (e.g. {overlap[0]}); "
            "temperatures must be fitted on held-out images: give images the model never saw with labels=FILE"
        )
    least = minimum_held_out(hierarchy)
    if len(held_out_paths) < least:
        raise DataError(
            f"{what}: {len(held_out_paths)} image(s) are too few to fit temperatures on; calibration needs at "
            f"least {least} ({MIN_IMAGES_PER_CLASS} per class of the average level, levels of "
            f"{', '.join(map(str, hierarchy.level_sizes))} classes)"
        )


def _fit_bounded(loss_of, size: int, fixed: Sequence[bool] = ()) -> torch.Tensor:
    """The temperatures (``size``, float64) in :data:`TEMPERATURE_BOUNDS` that minimise ``loss_of(temperatures)``:
    L-BFGS-B on the log-temperatures from 0 (T = 1), with torch's gradient; those ``fixed`` stay at 1."""
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    bounds = [(0.0, 0.0) if i < len(fixed) and fixed[i] else (low, high) for i in range(size)]

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        log_t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        loss = loss_of(log_t.exp())
        (grad,) = torch.autograd.grad(loss, log_t)
        return float(loss.detach()), grad.numpy()

    result = minimize(value_and_grad, np.zeros(size), jac=True, method="L-BFGS-B", bounds=bounds)
    return torch.from_numpy(np.exp(result.x))


def _at_bound(temperatures: torch.Tensor) -> list[int]:
    """0-based positions of the temperatures that ended on a bound (within 0.1 %)."""
    low, high = TEMPERATURE_BOUNDS
    return [i for i, t in enumerate(temperatures.tolist()) if t <= low * 1.001 or t >= high * 0.999]


def fit_temperatures(
    outputs: SplitOutputs, hierarchy: Hierarchy, tree_scores: str, per_level: bool = True
) -> dict:
    """Temperatures that minimise a held-out split's negative log-likelihood, and that NLL before and after.

    The tree temperatures minimise, summed over the levels, each level's mean ``-log P(ancestor)`` of the labels
    that reach it (a label counts at its own level and at every level above): so each level's temperature is
    fitted on that level's answers, not only on the labels' own level (mostly leaves). Every temperature lies in
    :data:`TEMPERATURE_BOUNDS` (one that ends on a bound is logged as a warning); a level whose NLL the fit does not
    lower keeps T = 1 and the others are fitted again, until no level's NLL is higher than before (at worst every
    level keeps T = 1). The leaf temperature minimises the leaf
    cross-entropy of the leaf-labelled samples, and stays 1 when that does not lower it.

    Returns the ``calibration`` record of a checkpoint: ``tree_temperature`` (L values, equal ones when not
    ``per_level``; None for ``tree_scores="leaf"``), ``leaf_temperature``, ``per_level``, ``bounds``, ``nll``
    (``tree`` with ``before`` / ``after`` summed over the levels and ``levels_before`` / ``levels_after`` per
    level; ``leaf``), ``at_bound`` (the 1-based levels, or ``"leaf"``, whose temperature is on a bound).
    """
    record: dict = {
        "tree_temperature": None, "per_level": per_level, "bounds": list(TEMPERATURE_BOUNDS), "nll": {},
        "at_bound": [],
    }  # fmt: skip
    targets = outputs.targets
    levels = hierarchy.num_levels
    if tree_scores != "leaf":
        loss = TreeLoss(hierarchy, formulation="subtree")  # -log P(target) for a node of any level
        sizes = torch.tensor(hierarchy.level_sizes)
        scores = outputs.scores.double()
        ancestor = TreeProbabilities(hierarchy).ancestor[
            :, targets
        ]  # (L, M) each label's ancestor, -1 below it
        rows = [(ancestor[lvl] >= 0).nonzero().squeeze(1) for lvl in range(levels)]

        def level_nll(t: torch.Tensor) -> torch.Tensor:  # (L,) or (1,) -> (L,) mean NLL of each level
            per_node = t.repeat_interleave(sizes) if per_level else t.expand(hierarchy.num_nodes)
            scaled = scores / per_node
            return torch.stack([
                loss(scaled[r], ancestor[lvl, r]) if r.numel() else scaled.new_zeros(())
                for lvl, r in enumerate(rows)
            ])  # fmt: skip

        size = levels if per_level else 1
        before = level_nll(torch.ones(size, dtype=torch.float64))
        fixed = [False] * size
        temperatures, after = torch.ones(size, dtype=torch.float64), before
        while not all(fixed):  # each round fixes at least one more level at T = 1, so it ends
            temperatures = _fit_bounded(lambda t: level_nll(t).sum(), size, fixed)
            after = level_nll(temperatures)
            if per_level:
                idle = [i for i in range(size) if not fixed[i] and not after[i] < before[i] - 1e-12]
                hurt = any(bool(after[i] > before[i] + 1e-12) for i in range(size))
            else:
                idle, hurt = ([] if after.sum() < before.sum() - 1e-12 else [0]), False
            if idle:  # the rule: a level the fit does not help keeps T = 1
                for i in idle:
                    fixed[i] = True
            elif hurt:  # a level kept at 1 made worse by the others: hold back the one that moved most
                free = [i for i in range(size) if not fixed[i]]
                fixed[max(free, key=lambda i: abs(math.log(float(temperatures[i]))))] = True
            else:
                break
        if all(fixed):
            temperatures, after = torch.ones(size, dtype=torch.float64), before
        full = temperatures.expand(levels) if not per_level else temperatures
        record["tree_temperature"] = [float(t) for t in full]
        record["at_bound"] += [i + 1 for i in _at_bound(full)]
        record["nll"]["tree"] = {
            "before": float(before.sum()), "after": float(after.sum()),
            "levels_before": before.tolist(), "levels_after": after.tolist(),
        }  # fmt: skip
    leaf0 = hierarchy.offsets[-2]
    leaf = targets >= leaf0
    record["leaf_temperature"] = 1.0
    if leaf.any():
        logits, labels = outputs.leaf_logits[leaf].double(), targets[leaf] - leaf0

        def leaf_nll(t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits / t, labels)

        before = float(leaf_nll(torch.ones(1, dtype=torch.float64)))
        temperature = _fit_bounded(leaf_nll, 1)
        after = float(leaf_nll(temperature))
        if after < before:
            record["leaf_temperature"] = float(temperature)
            record["at_bound"] += ["leaf"] if _at_bound(temperature) else []
        record["nll"]["leaf"] = {"before": before, "after": min(after, before)}
    for which in record["at_bound"]:
        name = "the leaf softmax" if which == "leaf" else f"level {which}"
        log.warning(
            "calibration: the temperature of %s is on a bound of %s: the held-out split says little about it",
            name, list(TEMPERATURE_BOUNDS),
        )  # fmt: skip
    return record


def level_report(
    outputs: SplitOutputs, hierarchy: Hierarchy, tree_scores: str, calibration: dict | None
) -> dict[str, list[float]]:
    """Per level, on a split, with the given temperatures (None: without): ``ece``, the expected calibration error
    of the marginals (the measure of ``ece_l{l}`` in :class:`hrn.metrics.HierarchicalMetrics`), and
    ``accuracy``, the marginal accuracy (argmax of the marginals inside the level, ``acc_l{l}_marginal``), which
    per-level temperatures can change."""
    probabilities = TreeProbabilities.calibrated(hierarchy, calibration)
    levels = list(outputs.scores.split(hierarchy.level_sizes, 1)) if tree_scores != "leaf" else []
    output = HRNOutput(
        level_probs=levels, level_logits=levels, leaf_logits=outputs.leaf_logits
    )  # scores(...) gives them back
    marginals = probabilities.node_probabilities(output, tree_scores)
    confidence, classes = level_confidence(marginals, hierarchy.level_sizes)
    truth = hierarchy.ancestor_at_level[:, outputs.targets].T
    known = truth >= 0
    correct = (classes == truth) & known
    return {
        "ece": [float(e) for e in level_ece(confidence, correct, known)],
        "accuracy": (correct.sum(0) / known.sum(0).clamp(min=1)).tolist(),
    }


def save_calibrated(source: str | Path, calibration: dict, out: str | Path, trust: bool = False) -> Path:
    """A new checkpoint (or shared folder, for a folder ``source``) at ``out``: ``source`` with ``calibration`` in
    its description; written atomically, the source left as it is."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise CheckpointError(
            f"out={out}: is the model being calibrated; give another path, e.g. out={out.stem}-calibrated"
        )
    if source.is_dir():
        where = f"ckpt_path={source}"
        try:
            config = json.loads((source / CONFIG).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{where}: cannot read {CONFIG} ({e})") from None
        description = ModelDescription.from_dict(config, where).replace(calibration=calibration)
        write_folder({CONFIG: config_bytes(description), WEIGHTS: (source / WEIGHTS).read_bytes()}, out)
        return out
    ckpt = read_checkpoint(source, trust)
    description = ModelDescription.from_dict(ckpt[CHECKPOINT_KEY], f"ckpt_path={source}")
    ckpt[CHECKPOINT_KEY] = description.replace(calibration=calibration).to_dict()
    if RNG_KEY in ckpt:  # a trusted checkpoint of hrn < 0.2: its NumPy state as the safe unpickler reads it
        name, keys, *rest = ckpt[RNG_KEY]["numpy"]
        if not isinstance(keys, torch.Tensor):
            ckpt[RNG_KEY]["numpy"] = (name, torch.as_tensor(keys.astype("int64")), *rest)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    atomic_write_bytes(out, buffer.getvalue())
    return out
