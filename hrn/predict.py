"""``python -m hrn.predict ckpt_path=PATH images=[a.jpg,b.jpg] [top_k=5]``: classify images along the whole tree.

``images`` is a list of files, a folder (its images, sorted) or a glob. Prints one JSON line per image::

    {"path": "a.jpg",
     "path_prediction": [{"level": 1, "label": "Procellariiformes", "prob": 0.97}, ...],
     "top_k": {"1": [{"label": ..., "prob": ...}, ...], "2": [...], ...},
     "leaf_softmax_top_k": [{"label": ..., "prob": ...}, ...]}

``path_prediction`` follows the tree marginals from the top: the most probable level-1 node, then its most
probable child, and so on, so it is always a valid root-to-leaf path; ``prob`` is each node's marginal
probability. ``top_k`` ranks each level by marginal probability; ``leaf_softmax_top_k`` is the leaf softmax head's.
Works from the checkpoint alone: tree, names, network and test transform are stored in it.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig

from hrn.app import CONF_DIR, load_checkpoint, report_errors
from hrn.data.augment import eval_transform
from hrn.data.base import DataError
from hrn.data.files import ImageFiles
from hrn.hierarchy import Hierarchy
from hrn.model import ModelError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def expand_images(spec: str | Iterable[str]) -> list[Path]:
    """A list of files, a folder or a glob -> the image files, in order. Missing ones are a one-line error."""
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[Path] = []
    for item in map(str, items):
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(
                    f"images={item}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            out += found
        elif any(c in item for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not found:
                raise DataError(f"images={item}: the pattern matches no file")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise DataError(f"images: {item}: image not found")
    if not out:
        raise DataError("images=[]: give at least one image, a folder or a glob")
    return out


def greedy_path(marginals: torch.Tensor, h: Hierarchy, node: int | None = None) -> list[int]:
    """(N,) marginals -> a root-to-leaf path (global indices, one per level).

    ``node=None``: the most probable level-1 node, then its most probable child, and so on (the prediction).
    A node index: its ancestors, the node, then below it the most probable child at each level.
    """
    off = h.offsets
    path = [int(marginals[: off[1]].argmax()) if node is None else node]
    while h.parent_of(path[0]) >= 0:
        path.insert(0, h.parent_of(path[0]))
    for lvl in range(len(path), h.num_levels):
        children = (h.level_parents[lvl - 1] == path[-1] - off[lvl - 1]).nonzero().flatten() + off[lvl]
        path.append(int(children[marginals[children].argmax()]))
    return path


def pick_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``; asking for CUDA where there is none is one line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device={device}: CUDA is not available here; use device=cpu or device=auto")
    return torch.device(device)


def describe(path: Path, marginals: torch.Tensor, leaf_probs: torch.Tensor, h: Hierarchy, k: int) -> dict:
    names, off = h.names, h.offsets
    route = greedy_path(marginals, h)
    top = {}
    for lvl in range(h.num_levels):
        probs = marginals[off[lvl] : off[lvl + 1]]
        values, idx = probs.topk(min(k, probs.numel()))
        top[str(lvl + 1)] = [
            {"label": names[off[lvl] + int(i)], "prob": round(float(v), 6)}
            for v, i in zip(values, idx, strict=True)
        ]
    values, idx = leaf_probs.topk(min(k, leaf_probs.numel()))
    return {
        "path": str(path),
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


def predict(
    ckpt_path: str, images, top_k: int = 5, batch_size: int = 16, device: str = "auto"
) -> Iterator[dict]:
    """Yield one prediction dict per image (see the module docstring)."""
    if top_k < 1:
        raise DataError(f"top_k={top_k}: must be at least 1")
    module, meta = load_checkpoint(ckpt_path)
    dev = pick_device(device)
    module.to(dev)
    data = meta.get("data", {})
    transform = eval_transform(data.get("resize", 550), data.get("crop", 448))
    paths = expand_images(images)
    load = ImageFiles(paths)
    h = module.hierarchy
    for start in range(0, len(paths), batch_size):
        batch = [transform(load(i)) for i in range(start, min(start + batch_size, len(paths)))]
        with torch.no_grad():
            output = module.net(torch.stack(batch).to(dev))
            marginals = module.tree.node_probabilities(output, module.tree_scores).cpu()
            leaf_probs = output.leaf_logits.float().softmax(1).cpu()
        for j in range(len(batch)):
            yield describe(paths[start + j], marginals[j], leaf_probs[j], h, top_k)


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
@report_errors
def main(cfg: DictConfig) -> None:
    images = list(cfg.images) if isinstance(cfg.images, ListConfig) else cfg.images
    for result in predict(cfg.ckpt_path, images, cfg.top_k, cfg.batch_size, cfg.device):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
