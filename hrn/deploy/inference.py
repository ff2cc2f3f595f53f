"""Classifying image files along the whole tree with a trained model: what ``python -m hrn.predict`` prints.

``images`` is a list of files, a folder (its images, sorted) or a glob. One dict per image::

    {"path": "a.jpg",
     "prediction": {"label": "Diomedeidae", "level": 2, "prob": 0.93},
     "path_prediction": [{"level": 1, "label": "Procellariiformes", "prob": 0.97}, ...],
     "top_k": {"1": [{"label": ..., "prob": ...}, ...], "2": [...], ...},
     "leaf_softmax_top_k": [{"label": ..., "prob": ...}, ...]}

The node probabilities are the leaf softmax summed up the tree (``probabilities=leaf``, the default: on
Fashion-MNIST the best calibrated and the best at matched coverage), the tree marginals of the per-level outputs
(``probabilities=tree``, the paper's) or their mean (``probabilities=mix``); :data:`hrn.tree.SOURCES`.
``path_prediction`` follows them from the top: the most probable level-1 node, then its most
probable child, and so on, so it is always a valid root-to-leaf path; ``prob`` is each node's marginal
probability. ``prediction`` is the deepest node of that path whose marginal reaches the ``threshold`` (the leaf
with the default 0; null when not even the level-1 node reaches it): the answer at the level the model is sure
of. ``top_k`` ranks each level by marginal probability; ``leaf_softmax_top_k`` is the leaf softmax head's. Works
from the checkpoint alone: tree, names, network, test transform and temperatures (``hrn.calibrate``) are in it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from hrn.checkpoints import LoadedModel, load_checkpoint
from hrn.data.base import DataError, check_count
from hrn.data.files import ImageFiles, expand_images
from hrn.metrics.hierarchical import check_threshold
from hrn.nets import ModelError
from hrn.tree import Hierarchy, TreeProbabilities, check_source

log = logging.getLogger(__name__)

__all__ = ["describe", "infer", "pick_device", "predict", "predict_images"]


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


ON_BAD_IMAGE = ("error", "skip")


def check_batch_settings(top_k: int, batch_size: int, on_bad_image: str = "error") -> None:
    """One line for a ``top_k`` or ``batch_size`` under 1, or an ``on_bad_image`` other than error / skip."""
    check_count("top_k", top_k, 1)
    check_count("batch_size", batch_size, 1, "images per forward pass")
    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(f"on_bad_image={on_bad_image!r}: expected 'error' or 'skip'")


def infer(
    net, probabilities: TreeProbabilities, images: torch.Tensor, tree_scores: str, source: str = "leaf"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The network once over (B, 3, H, W) transformed images, without gradients: the node probabilities (B, N) of
    ``source`` (:data:`hrn.tree.SOURCES`), their top-down path (B, L) and the leaf softmax (B, n_L), each through
    ``probabilities``' temperatures."""
    with torch.no_grad():
        output = net(images)
        marginals = probabilities.node_probabilities(output, tree_scores, source)
        return (
            marginals,
            probabilities.top_down_path(marginals),
            probabilities.leaf_probabilities(output.leaf_logits),
        )


def predict_images(
    model: LoadedModel,
    paths: list[Path],
    top_k: int = 5,
    batch_size: int = 16,
    device: str = "auto",
    threshold: float = 0.0,
    on_bad_image: str = "error",
    skipped: list[Path] | None = None,
    probabilities: str = "leaf",
) -> Iterator[dict]:
    """Yield one prediction dict per image file (see the module docstring), ``batch_size`` images at a time, the
    node probabilities from ``probabilities`` (:data:`hrn.tree.SOURCES`; the leaf softmax summed up the tree by
    default).

    A file that does not decode is an error (``on_bad_image="error"``: one line naming it), or with ``"skip"``
    is left out, logged, and appended to ``skipped`` when given; the other files are predicted."""
    check_batch_settings(top_k, batch_size, on_bad_image)
    threshold = check_threshold(threshold)
    source = check_source(probabilities)
    dev = pick_device(device)
    net = model.net.to(dev)
    tree = model.probabilities().to(dev)
    transform = model.transform()
    load = ImageFiles(paths)
    for start in range(0, len(paths), batch_size):
        batch, names = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                batch.append(transform(load(i)))
            except DataError as e:
                if on_bad_image == "error":
                    raise DataError(f"{e}; or pass on_bad_image=skip to predict the other files") from None
                log.warning("skipped %s (on_bad_image=skip): %s", paths[i], e)
                if skipped is not None:
                    skipped.append(paths[i])
                continue
            names.append(paths[i])
        if not batch:
            continue
        marginals, routes, leaf_probs = infer(
            net, tree, torch.stack(batch).to(dev), model.tree_scores, source
        )
        nodes = tree.confident_node(marginals, threshold, routes)[0].tolist()
        routes, marginals, leaf_probs = routes.tolist(), marginals.cpu(), leaf_probs.cpu()
        for j in range(len(batch)):
            yield describe(names[j], marginals[j], routes[j], leaf_probs[j], model.hierarchy, top_k, nodes[j])


def predict(
    ckpt_path: str | Path,
    images,
    top_k: int = 5,
    batch_size: int = 16,
    device: str = "auto",
    trust: bool = False,
    threshold: float = 0.0,
    on_bad_image: str = "error",
    skipped: list[Path] | None = None,
    probabilities: str = "leaf",
) -> Iterator[dict]:
    """Yield one prediction dict per image of ``images`` (a list of files, a folder or a glob) from the
    checkpoint (or shared folder) at ``ckpt_path``, the prediction at ``threshold`` (0: the leaf);
    ``trust``: as :func:`hrn.checkpoints.read_checkpoint`; ``on_bad_image``, ``skipped``, ``probabilities``: as
    :func:`predict_images`."""
    check_batch_settings(top_k, batch_size, on_bad_image)
    check_threshold(threshold)
    check_source(probabilities)
    model = load_checkpoint(ckpt_path, trust)
    yield from predict_images(
        model,
        expand_images(images),
        top_k,
        batch_size,
        device,
        threshold,
        on_bad_image,
        skipped,
        probabilities,
    )
