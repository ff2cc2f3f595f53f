"""What every dataset shares: a labelled-image dataset, the paper's transforms and protocols, and the loaders.

A dataset of the package is a :class:`DataSplits`: a :class:`~hrn.hierarchy.Hierarchy` and three
:class:`LabelledImages` (train / val / test) whose targets are node indices of that hierarchy. The protocols
(relabel, degrade) act on the training split only; the test split is never relabelled or degraded.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hrn.errors import HRNError
from hrn.hierarchy import Hierarchy

__all__ = [
    "DataError",
    "LabelledImages",
    "DataSplits",
    "build_transforms",
    "NORMALIZE_MEAN",
    "NORMALIZE_STD",
    "relabel",
    "check_relabel_ratio",
]

log = logging.getLogger(__name__)


class DataError(HRNError):
    """Bad data or a bad data setting. One line, naming the file, key or value and how to fix it."""


# The authors normalise every channel with mean 0.5 and std 0.5 (pixels to [-1, 1]), not ImageNet's statistics.
NORMALIZE_MEAN = (0.5, 0.5, 0.5)
NORMALIZE_STD = (0.5, 0.5, 0.5)


def build_transforms(train: bool, resize: int = 550, crop: int = 448, padding: int = 8, flip: bool = True):
    """The paper's transforms (§4): train Resize(resize, resize) -> RandomCrop(crop, padding) -> flip ->
    Normalize(0.5, 0.5); test Resize(resize, resize) -> CenterCrop(crop). PIL image or uint8 (3, H, W) tensor
    -> float (3, crop, crop)."""
    steps: list = [v2.ToImage(), v2.Resize((resize, resize), antialias=True)]
    if train:
        steps.append(v2.RandomCrop(crop, padding=padding) if padding else v2.RandomCrop(crop))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    else:
        steps.append(v2.CenterCrop(crop))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(NORMALIZE_MEAN), list(NORMALIZE_STD))]
    return v2.Compose(steps)


def downsample(image: Image.Image | torch.Tensor, scale: float) -> Image.Image | torch.Tensor:
    """Bilinear downsample by ``scale`` (the paper's low-resolution protocol), before the usual transforms."""
    h, w = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[-2:]
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    return TF.resize(image, size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


class LabelledImages(Dataset):
    """Images with one node label each: ``dataset[i] -> (image (3, crop, crop) float, target node index, i)``.

    Args:
        load: ``load(i)`` returns sample i's image (PIL image or uint8 (3, H, W) tensor).
        targets: node index of each sample's label (any level).
        paths: a name per sample (file path, or a synthetic id), for predictions and error messages.
        transform: applied after loading (and after degrading).
    """

    def __init__(
        self,
        load: Callable[[int], Image.Image | torch.Tensor],
        targets: Sequence[int],
        paths: Sequence[str],
        transform: Callable | None = None,
    ) -> None:
        if len(targets) != len(paths):
            raise ValueError("targets and paths must have the same length")
        self.load = load
        self.targets = list(targets)
        self.paths = list(paths)
        self.transform = transform
        self.degraded = [False] * len(self.targets)
        self.degrade_scale = 1.0

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int, int]:
        """``key``: an index i, or ``(i, seed, epoch)`` from :class:`EpochShuffleSampler`, which draws the random
        augmentation of sample i from its own generator seeded by (seed, epoch, i).

        Returns (image, target node index, i); the index lets metrics count every image exactly once.
        """
        i, seed, epoch = key if isinstance(key, tuple) else (key, None, None)
        image = self.load(i)
        if self.degraded[i]:
            image = downsample(image, self.degrade_scale)
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(hash((seed, epoch, i)) & 0x7FFF_FFFF_FFFF_FFFF)
                    image = self.transform(image)
        return image, self.targets[i], i

    def labelled_at_level(self, hierarchy: Hierarchy) -> list[int]:
        """How many samples carry a label at each level, coarse -> fine."""
        counts = [0] * hierarchy.num_levels
        for t in self.targets:
            counts[hierarchy.level_of(t) - 1] += 1
        return counts


class EpochShuffleSampler(Sampler):
    """Shuffles the training set as a function of (seed, epoch) only, and hands each sample its own augmentation
    seed (keys ``(i, seed, epoch)``, see :class:`LabelledImages`).

    The default shuffling draws from the global random generator whenever a loader iterator is created, and
    Lightning creates them at different moments in a fresh and in a resumed run; with this sampler an epoch sees
    the same images in the same order with the same augmentations however it was reached, with any number of
    workers. Lightning calls ``set_epoch`` at the start of every epoch.
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF_FFFF_FFFF)
        for i in torch.randperm(self.num_samples, generator=generator).tolist():
            yield (i, self.seed, self.epoch)


@dataclass
class DataSplits:
    """A hierarchy and its three splits, plus the loader settings. Built by each dataset's factory."""

    hierarchy: Hierarchy
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages
    batch_size: int = 32
    num_workers: int = 0
    name: str = "dataset"
    info: dict = field(default_factory=dict)  # what the checkpoint needs to rebuild the test transform
    seed: int = 0  # training order and augmentations (set from the run's seed by the protocols)

    def loader(self, split: str, shuffle: bool | None = None) -> DataLoader:
        """A loader over ``split``; training shuffles and drops nothing, so every image counts."""
        dataset = getattr(self, split)
        if len(dataset) == 0:
            raise DataError(
                f"the {self.name} {split} split has no samples; check the dataset's split settings"
            )
        shuffle = (split == "train") if shuffle is None else shuffle
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


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
        "relabel_ratio": float(relabel_ratio),
        "relabel_order": relabel_order,
        "relabelled": sum(changed),
        "degrade_scale": float(degrade_scale),
        "degraded": sum(train.degraded),
    }
