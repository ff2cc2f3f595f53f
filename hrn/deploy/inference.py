"""Classifying image files along the whole tree with a trained model: what ``python -m hrn.predict`` prints.

``images`` is a list of files, a folder (its images, sorted) or a glob. One dict per image::

    {"path": "a.jpg",
     "prediction": {"label": "Diomedeidae", "level": 2, "prob": 0.93},
     "path_prediction": [{"level": 1, "label": "Procellariiformes", "prob": 0.97}, ...],
     "top_k": {"1": [{"label": ..., "prob": ...}, ...], "2": [...], ...},
     "leaf_softmax_top_k": [{"label": ..., "prob": ...}, ...]}

``path_prediction`` follows the tree marginals from the top: the most probable level-1 node, then its most
probable child, and so on, so it is always a valid root-to-leaf path; ``prob`` is each node's marginal
probability. ``prediction`` is the deepest node of that path whose marginal reaches the ``threshold`` (the leaf
with the default 0; null when not even the level-1 node reaches it): the answer at the level the model is sure
of. ``top_k`` ranks each level by marginal probability; ``leaf_softmax_top_k`` is the leaf softmax head's. Works
from the checkpoint alone: tree, names, network, test transform and temperatures (``hrn.calibrate``) are in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from hrn.checkpoints import LoadedModel, load_checkpoint
from hrn.data.base import DataError
from hrn.data.files import ImageFiles, expand_images
from hrn.metrics.hierarchical import check_threshold
from hrn.nets import ModelError
from hrn.tree import Hierarchy

__all__ = ["describe", "pick_device", "predict", "predict_images"]


def pick_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``; asking for CUDA where there is none is one line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={device}: CUDA is not available here; use device=cpu or device=auto")
    return torch.device(device)


def describe(
    path: Path,
    marginals: torch.Tensor,
    route: list[int],
    leaf_probs: torch.Tensor,
    h: Hierarchy,
    k: int,
    node: int | None = None,
) -> dict:
    """One image's prediction: (N,) marginals, its top-down path (global node indices, one per level), the (n_L,)
    leaf softmax and the node predicted at the threshold (-1 for none; None: the end of the path) -> the dict
    of the module docstring."""
    names, off = h.names, h.offsets
    node = route[-1] if node is None else node
    top = {}
    for lvl in range(h.num_levels):
        probs = marginals[off[lvl] : off[lvl + 1]]
        values, idx = probs.topk(min(k, probs.numel()))
        top[str(lvl + 1)] = [
            {"label": names[off[lvl] + int(i)], "prob": round(float(v), 6)}
            for v, i in zip(values, idx, strict=True)
        ]
    values, idx = leaf_probs.topk(min(k, leaf_probs.numel()))
    prediction = None
    if node >= 0:
        prediction = {
            "label": names[node],
            "level": h.level_of(node),
            "prob": round(float(marginals[node]), 6),
        }
    return {
        "path": str(path),
        "prediction": prediction,
        "path_prediction": [
            {"level": lvl + 1, "label": names[v], "prob": round(float(marginals[v]), 6)}
            for lvl, v in enumerate(route)
        ],
        "top_k": top,
        "leaf_softmax_top_k": [
            {"label": names[off[-2] + int(i)], "prob": round(float(v), 6)}
            for v, i in zip(values, idx, strict=True)
        ],
    }


def predict_images(
    model: LoadedModel,
    paths: list[Path],
    top_k: int = 5,
    batch_size: int = 16,
    device: str = "auto",
    threshold: float = 0.0,
) -> Iterator[dict]:
    """Yield one prediction dict per image file (see the module docstring), ``batch_size`` images at a time."""
    if top_k < 1:
        raise DataError(f"top_k={top_k}: must be at least 1")
    threshold = check_threshold(threshold)
    dev = pick_device(device)
    net = model.net.to(dev)
    probabilities = model.probabilities().to(dev)
    transform = model.transform()
    load = ImageFiles(paths)
    for start in range(0, len(paths), batch_size):
        batch = [transform(load(i)) for i in range(start, min(start + batch_size, len(paths)))]
        with torch.no_grad():
            output = net(torch.stack(batch).to(dev))
            marginals = probabilities.node_probabilities(output, model.tree_scores)
            routes = probabilities.top_down_path(marginals)
            nodes = probabilities.confident_node(marginals, threshold, routes)[0].tolist()
            routes, marginals = routes.tolist(), marginals.cpu()
            leaf_probs = probabilities.leaf_probabilities(output.leaf_logits).cpu()
        for j in range(len(batch)):
            yield describe(
                paths[start + j], marginals[j], routes[j], leaf_probs[j], model.hierarchy, top_k, nodes[j]
            )


def predict(
    ckpt_path: str | Path,
    images,
    top_k: int = 5,
    batch_size: int = 16,
    device: str = "auto",
    trust: bool = False,
    threshold: float = 0.0,
) -> Iterator[dict]:
    """Yield one prediction dict per image of ``images`` (a list of files, a folder or a glob) from the
    checkpoint (or shared folder) at ``ckpt_path``, the prediction at ``threshold`` (0: the leaf);
    ``trust``: as :func:`hrn.checkpoints.read_checkpoint`."""
    if top_k < 1:
        raise DataError(f"top_k={top_k}: must be at least 1")
    check_threshold(threshold)
    model = load_checkpoint(ckpt_path, trust)
    yield from predict_images(model, expand_images(images), top_k, batch_size, device, threshold)
