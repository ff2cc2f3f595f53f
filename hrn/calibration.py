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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hrn.atomic import atomic_write_bytes
from hrn.checkpoints import read_checkpoint
from hrn.data.augment import normalize
from hrn.description import CHECKPOINT_KEY, RNG_KEY, CheckpointError, ModelDescription
from hrn.losses import TreeLoss
from hrn.metrics.hierarchical import level_confidence, level_ece
from hrn.nets.output import HRNOutput
from hrn.share import CONFIG, WEIGHTS, config_bytes, write_folder
from hrn.tree import Hierarchy, TreeProbabilities

__all__ = ["SplitOutputs", "calibration_ece", "collect_outputs", "fit_temperatures", "save_calibrated"]


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


def _fit_log_temperature(loss_of, size: int) -> torch.Tensor:
    """The log-temperatures (``size`` of them) that minimise ``loss_of(temperatures)``, by L-BFGS from 1."""
    log_t = torch.zeros(size, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_of(log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.detach()


def fit_temperatures(
    outputs: SplitOutputs, hierarchy: Hierarchy, tree_scores: str, per_level: bool = True
) -> dict:
    """Temperatures that minimise the split's negative log-likelihood, and that NLL before and after.

    Returns the ``calibration`` record of a checkpoint: ``tree_temperature`` (L values, equal ones when not
    ``per_level``; None for ``tree_scores="leaf"``), ``leaf_temperature``, ``per_level``, ``nll`` (``tree`` and
    ``leaf``, each ``before`` / ``after``).
    """
    record: dict = {"tree_temperature": None, "per_level": per_level, "nll": {}}
    targets = outputs.targets
    if tree_scores != "leaf":
        loss = TreeLoss(hierarchy, formulation="subtree")
        sizes = torch.tensor(hierarchy.level_sizes)

        def tree_nll(t: torch.Tensor) -> torch.Tensor:
            per_node = t.repeat_interleave(sizes) if per_level else t.expand(hierarchy.num_nodes)
            return loss(outputs.scores / per_node, targets)

        before = float(tree_nll(torch.ones(hierarchy.num_levels if per_level else 1)))
        log_t = _fit_log_temperature(tree_nll, hierarchy.num_levels if per_level else 1)
        temperatures = log_t.exp().expand(hierarchy.num_levels) if not per_level else log_t.exp()
        record["tree_temperature"] = [round(float(t), 6) for t in temperatures]
        record["nll"]["tree"] = {"before": before, "after": float(tree_nll(log_t.exp()))}
    leaf0 = hierarchy.offsets[-2]
    leaf = targets >= leaf0
    if leaf.any():

        def leaf_nll(t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs.leaf_logits[leaf] / t, targets[leaf] - leaf0)

        before = float(leaf_nll(torch.ones(1)))
        log_t = _fit_log_temperature(leaf_nll, 1)
        record["leaf_temperature"] = round(float(log_t.exp()), 6)
        record["nll"]["leaf"] = {"before": before, "after": float(leaf_nll(log_t.exp()))}
    else:
        record["leaf_temperature"] = 1.0
    return record


def calibration_ece(
    outputs: SplitOutputs, hierarchy: Hierarchy, tree_scores: str, calibration: dict | None
) -> list[float]:
    """Per level, the expected calibration error of the marginals on a split with the given temperatures (None:
    without): the same measure as ``ece_l{l}`` of :class:`hrn.metrics.HierarchicalMetrics`."""
    probabilities = TreeProbabilities.calibrated(hierarchy, calibration)
    levels = list(outputs.scores.split(hierarchy.level_sizes, 1)) if tree_scores != "leaf" else []
    output = HRNOutput(
        level_probs=levels, level_logits=levels, leaf_logits=outputs.leaf_logits
    )  # scores(...) gives them back
    marginals = probabilities.node_probabilities(output, tree_scores)
    confidence, classes = level_confidence(marginals, hierarchy.level_sizes)
    truth = hierarchy.ancestor_at_level[:, outputs.targets].T
    known = truth >= 0
    return [float(e) for e in level_ece(confidence, (classes == truth) & known, known)]


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
