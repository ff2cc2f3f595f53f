"""A built-in synthetic three-level dataset, so everything runs offline.

Every image is a uint8 (3, S, S) tensor made from a seed:

- level 1 (shape): a coarse bright shape — horizontal bar, vertical bar or centred square — that survives a
  0.25 downsample;
- level 2 (colour): the shape's colour, two colours per shape;
- level 3 (texture): a fine texture of 1-pixel stripes, horizontal or vertical, laid over the whole image. A 0.25
  bilinear downsample averages it away, so leaves inside a family can only be told apart at full resolution —
  the situation of the paper's low-resolution study.

All three cues are symmetric under a horizontal flip, so the paper's train-time flip keeps every label true.
Positions, sizes, brightness and noise vary per image.
"""

from __future__ import annotations

import torch

from hrn.data.augment import Augment
from hrn.data.base import DataSplits, LabelledImages, TensorImages
from hrn.tree import Hierarchy

__all__ = ["synthetic", "synthetic_hierarchy", "make_images"]

SHAPES = ("hbar", "vbar", "square")
COLOURS = {  # two per shape; RGB in [0, 1]
    "hbar": (("red", (0.9, 0.15, 0.15)), ("green", (0.15, 0.85, 0.2))),
    "vbar": (("blue", (0.2, 0.3, 0.95)), ("yellow", (0.9, 0.85, 0.1))),
    "square": (("magenta", (0.85, 0.2, 0.85)), ("cyan", (0.1, 0.85, 0.85))),
}
TEXTURES = ("hstripes", "vstripes")
_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}


def synthetic_hierarchy() -> Hierarchy:
    """3 shapes -> 6 shape-colours -> 12 shape-colour-textures."""
    edges = []
    for shape in SHAPES:
        for colour, _ in COLOURS[shape]:
            edges.append((shape, f"{shape}-{colour}"))
            edges += [(f"{shape}-{colour}", f"{shape}-{colour}-{tex}") for tex in TEXTURES]
    return Hierarchy.from_edges(edges)


def make_images(leaves: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw one image per leaf index (0..11, in ``synthetic_hierarchy`` leaf order): (B,) -> uint8 (B, 3, S, S)."""
    b = leaves.numel()
    shape = leaves // 4  # 2 colours x 2 textures per shape
    colour = torch.tensor([c for s in SHAPES for _, c in COLOURS[s]])[leaves // 2]  # (B, 3)
    texture = leaves % 2

    def rand(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, 1, 1, generator=generator)

    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    yy, xx = yy.float()[None], xx.float()[None]  # (1, S, S)
    centre = size / 2 + rand(-size / 10, size / 10)
    half = size * rand(0.14, 0.22)  # half-width of bar or square
    length = size * rand(0.3, 0.45)  # half-length of a bar
    cy, cx = centre, size / 2  # x stays centred, so the train-time flip keeps the shape where it was
    hbar = ((yy - cy).abs() < half) & ((xx - cx).abs() < length)
    vbar = ((xx - cx).abs() < half) & ((yy - cy).abs() < length)
    square = ((yy - cy).abs() < half * 1.4) & ((xx - cx).abs() < half * 1.4)
    mask = torch.where(shape.view(-1, 1, 1) == 0, hbar, torch.where(shape.view(-1, 1, 1) == 1, vbar, square))

    background = 0.25 + 0.1 * torch.rand(b, 3, 1, 1, generator=generator)
    brightness = 0.8 + 0.3 * torch.rand(b, 1, 1, 1, generator=generator)
    img = torch.where(mask[:, None], colour[:, :, None, None] * brightness, background)
    # 1-pixel stripes with a random phase: invisible after averaging 4x4 blocks.
    phase = torch.randint(0, 2, (b, 1, 1), generator=generator)
    stripes = torch.where(texture.view(-1, 1, 1) == 0, (yy.long() + phase) % 2, (xx.long() + phase) % 2)
    img = img + 0.18 * (stripes.float()[:, None] - 0.5)
    img = img + 0.06 * torch.randn(img.shape, generator=generator)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def synthetic(
    batch_size: int = 64,
    num_workers: int = 0,
    resize: int = 32,
    crop: int = 32,
    padding: int = 2,
    image_size: int = 32,
    train_per_leaf: int = 150,
    val_per_leaf: int = 25,
    test_per_leaf: int = 50,
    seed: int = 0,
) -> DataSplits:
    """The synthetic dataset: 3 -> 6 -> 12 classes, images generated in memory from ``seed``.

    Samples are listed leaf by leaf (like the real datasets' class-sorted lists), so ``relabel.order=file``
    relabels the last images of each class.
    """
    h = synthetic_hierarchy()
    leaf0 = h.offsets[-2]
    augment = Augment(resize, crop, padding)
    per_leaf = {"train": train_per_leaf, "val": val_per_leaf, "test": test_per_leaf}
    splits = {}
    for split, n in per_leaf.items():
        g = torch.Generator().manual_seed(seed * 1000 + _SPLIT_SEED[split])
        leaves = torch.arange(h.level_sizes[-1]).repeat_interleave(n)
        splits[split] = LabelledImages(
            TensorImages(make_images(leaves, image_size, g), resize),
            targets=(leaves + leaf0).tolist(),
            paths=[f"synthetic/{split}/{i:05d}" for i in range(len(leaves))],
            augment=augment,
        )
    return DataSplits(
        h, **splits, augment=augment, batch_size=batch_size, num_workers=num_workers, name="synthetic"
    )
