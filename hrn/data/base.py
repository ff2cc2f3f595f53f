"""What every dataset shares: image sources, a labelled-image dataset, its splits and the loaders.

A dataset of the package is a :class:`DataSplits`: a :class:`~hrn.tree.Hierarchy` and three
:class:`LabelledImages` (train / val / test) whose targets are node indices of that hierarchy, each serving its
images through an :class:`ImageSource` as uint8 crop windows (:mod:`hrn.data.augment`); the normalisation to float
happens on whole batches, on the training device. The paper's protocols (relabel, degrade) are in
:mod:`hrn.data.protocols`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from torchvision.transforms.v2 import functional as TF

from hrn.data.augment import Augment, downsample, mix_seeds, resize_image, window
from hrn.errors import HRNError
from hrn.tree import Hierarchy

__all__ = [
    "Batch",
    "DataError",
    "DataSplits",
    "ImageSource",
    "LabelledImages",
    "TensorImages",
    "check_count",
    "usable_workers",
]

log = logging.getLogger(__name__)


class DataError(HRNError):
    """Bad data or a bad data setting. One line, naming the file, key or value and how to fix it."""


def check_count(key: str, value, least: int, what: str = "") -> None:
    """One line unless ``value`` is a whole number (not a bool) of at least ``least``; ``what`` says what it
    counts."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DataError(
            f"{key}={value!r}: must be a whole number, at least {least}" + (f" ({what})" if what else "")
        )


def usable_workers(requested: int) -> int:
    """``requested`` loader workers, never more than the cores this process may run on (more only queue up and
    warn); logged when lowered."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > cores:
        log.info("dataset.num_workers=%d lowered to %d, the cores available", requested, cores)
        return cores
    return requested


class ImageSource:
    """Where a split's images come from, already through the deterministic part of the transforms.

    ``source(i, scale)`` -> uint8 (3, S, S): image i, first downsampled by ``scale`` when it is below 1 (the
    degrade protocol), then resized to S x S (``size``). :meth:`windows` gives a batch of crop windows; a source
    that can read a window without the whole image (the cache) overrides it. Subclasses serve the images from
    memory, from image files or from the on-disk cache of the resized images.
    """

    size: int

    def __len__(self) -> int:
        raise NotImplementedError

    def __call__(self, i: int, scale: float = 1.0) -> torch.Tensor:
        raise NotImplementedError

    def image(self, i: int, scale: float) -> np.ndarray | torch.Tensor:
        """Image i at ``scale`` as an array (C, S, S), C = 3 or 1 (grey: :func:`~hrn.data.augment.window`
        broadcasts it to three channels), that ``window`` can slice."""
        return self(i, scale)

    def windows(
        self,
        indices: Sequence[int],
        scales: Sequence[float],
        boxes: Sequence[tuple[int, int, int]],
        augment: Augment,
    ) -> torch.Tensor:
        """uint8 (B, 3, crop, crop): the crop window ``boxes[j]`` of image ``indices[j]`` at ``scales[j]``."""
        out = _batch_buffer((len(indices), 3, augment.crop, augment.crop))
        rows = out.numpy()
        for j, (i, s, box) in enumerate(zip(indices, scales, boxes, strict=True)):
            window(self.image(i, s), box, augment, rows[j])
        return out

    def prepare(self, scales: set[float]) -> None:
        """Get ready to serve these scales (a cache builds itself here); called once, before loading."""


def _batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty uint8 batch; in a loader worker, straight in shared memory, where the batch has to go anyway
    (as PyTorch's own collate does), instead of a copy at hand-over."""
    out = torch.empty(shape, dtype=torch.uint8)
    return out.share_memory_() if get_worker_info() is not None else out


class TensorImages(ImageSource):
    """Images held in memory, uint8 (M, C, H, W) with C = 1 (grey) or 3: resized once, then a sample is a window
    copy out of memory, whatever the number of workers."""

    def __init__(self, images: torch.Tensor, size: int) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError("images must be uint8 (M, C, H, W) with C = 1 or 3")
        self.images = images
        self.size = size
        same = tuple(images.shape[-2:]) == (size, size)
        # antialiased bilinear on uint8, in chunks so the float intermediate stays small
        self.resized = (
            images
            if same
            else torch.cat([TF.resize(c, [size, size], antialias=True) for c in images.split(4096)])
        )
        self._arrays = self.resized.numpy()  # a view: indexing numpy costs a fraction of indexing a tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def __call__(self, i: int, scale: float = 1.0) -> torch.Tensor:
        if scale < 1.0:  # degraded images: made when asked, cheap at in-memory sizes
            return resize_image(downsample(self.images[i], scale), self.size)
        return self.resized[i].expand(3, -1, -1)  # a view: grey stays one channel in memory

    def image(self, i: int, scale: float) -> np.ndarray:
        if scale < 1.0:
            return self(i, scale).numpy()
        return self._arrays[i]  # (C, S, S): grey stays one channel, window() broadcasts it

    def __getstate__(self) -> dict:
        # pickled for spawned workers: the numpy view would travel as a second copy of the images
        return {k: v for k, v in self.__dict__.items() if k != "_arrays"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._arrays = self.resized.numpy()


class Batch(NamedTuple):
    """What the loaders yield: uint8 images (B, 3, crop, crop), already cropped and flipped; they become float
    through :func:`~hrn.data.augment.normalize` on the training device."""

    images: torch.Tensor
    targets: torch.Tensor  # (B,) long: node index of each label (any level)
    index: torch.Tensor  # (B,) long: dataset index, so metrics count each image once under DDP


def collated(batch: Batch) -> Batch:
    """The loaders' collate function: :meth:`LabelledImages.__getitems__` already returns a whole batch."""
    return batch


class LabelledImages(Dataset):
    """Images with one node label each.

    ``dataset[key]`` and, for a whole batch at once, ``dataset.__getitems__(keys)`` (which PyTorch's DataLoader
    uses) give a :class:`Batch`. A key is an index i (evaluation: the centre crop) or ``(i, seed, epoch)`` from
    :class:`EpochShuffleSampler` (training: the random crop and flip of sample i, drawn from those alone).

    Args:
        source: serves image i resized to (3, S, S).
        targets: node index of each sample's label (any level).
        paths: a name per sample (file path, or an id), for predictions and error messages.
        augment: the transform sizes; draws the training crop and flip.
    """

    def __init__(
        self, source: ImageSource, targets: Sequence[int], paths: Sequence[str], augment: Augment
    ) -> None:
        if not len(targets) == len(paths) == len(source):
            raise ValueError("source, targets and paths must have the same length")
        if source.size != augment.resize:
            raise ValueError("the source must serve images at augment.resize")
        self.source = source
        self.targets = list(targets)
        self.paths = list(paths)
        self.augment = augment
        self.degraded = [False] * len(self.targets)
        self.degrade_scale = 1.0

    def __len__(self) -> int:
        return len(self.targets)

    def scale(self, i: int) -> float:
        """The downsampling factor of sample i (below 1 when the degrade protocol chose it)."""
        return self.degrade_scale if self.degraded[i] else 1.0

    def prepare(self) -> None:
        """Let the source get ready for the scales this split uses (e.g. build the image cache)."""
        self.source.prepare({self.scale(i) for i in range(len(self))})

    def __getitems__(self, keys: Sequence[int | tuple[int, int, int]]) -> Batch:
        a = self.augment
        if keys and isinstance(keys[0], tuple):
            index = [int(k[0]) for k in keys]
            boxes = [a.params(seed, epoch, i) for i, seed, epoch in keys]
        else:
            index = [int(k) for k in keys]
            boxes = [a.centre()] * len(index)
        images = self.source.windows(index, [self.scale(i) for i in index], boxes, a)
        targets = torch.tensor([self.targets[i] for i in index], dtype=torch.long)
        return Batch(images, targets, torch.tensor(index, dtype=torch.long))

    def __getitem__(self, key: int | tuple[int, int, int]) -> Batch:
        """One sample: uint8 image (3, crop, crop), target and index."""
        b = self.__getitems__([key])
        return Batch(b.images[0], b.targets[0], b.index[0])

    def labelled_at_level(self, hierarchy: Hierarchy) -> list[int]:
        """How many samples carry a label at each level, coarse -> fine."""
        counts = [0] * hierarchy.num_levels
        for t in self.targets:
            counts[hierarchy.level_of(t) - 1] += 1
        return counts


class EpochShuffleSampler(DistributedSampler):
    """Shuffles the training set as a function of (seed, epoch) only, hands each sample its own augmentation seed
    (keys ``(i, seed, epoch)``, see :class:`LabelledImages`), and under DDP gives each process its share.

    The default shuffling draws from the global random generator whenever a loader iterator is created, and
    Lightning creates them at different moments in a fresh and in a resumed run; with this sampler an epoch sees
    the same images in the same order with the same augmentations however it was reached, with any number of
    workers. Lightning calls ``set_epoch`` at the start of every epoch.

    Under DDP it shards by rank itself (every process draws the same permutation, takes every world-th index of
    it, the permutation padded to a multiple of the world size as ``DistributedSampler`` pads it). Being a
    ``DistributedSampler``, it is what Lightning hands ``set_epoch`` to directly, on every Lightning version:
    Lightning wraps any other sampler in a ``DistributedSamplerWrapper``, which before 2.5 kept the epoch to
    itself, so every epoch repeated the first one's order and crops. The rank and world size are read when an
    epoch starts (the process group does not exist yet when the loader is made).

    ``batch_size``: a process's last batch that would hold a single image is left out of that epoch (another one
    each epoch): BatchNorm cannot train on a batch of one. Every process then has the same number of batches.
    """

    def __init__(self, num_samples: int, seed: int = 0, batch_size: int | None = None) -> None:
        # not DistributedSampler.__init__: it needs the process group, which exists only once training starts
        self.num_samples_total = num_samples
        self.seed = seed
        self.epoch = 0
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def world() -> tuple[int, int]:
        """(rank, world size) of this process: (0, 1) outside DDP."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _share(self, world: int) -> int:
        share = -(-self.num_samples_total // world)  # ceil: the padded permutation's share of each process
        lone = self.batch_size is not None and share > 1 and share % self.batch_size == 1
        return share - 1 if lone else share

    def __len__(self) -> int:
        return self._share(self.world()[1])

    def __iter__(self):
        rank, world = self.world()
        generator = torch.Generator().manual_seed(mix_seeds(self.seed, self.epoch) & 0x7FFF_FFFF_FFFF_FFFF)
        order = torch.randperm(self.num_samples_total, generator=generator).tolist()
        padded = -(-len(order) // world) * world
        order += order[: padded - len(order)]  # every process gets as many (as DistributedSampler pads)
        for i in order[rank::world][: self._share(world)]:
            yield (i, self.seed, self.epoch)


@dataclass
class DataSplits:
    """A hierarchy and its three splits, plus the transform sizes and loader settings. Built by each dataset's
    factory."""

    hierarchy: Hierarchy
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages
    augment: Augment
    batch_size: int = 32
    num_workers: int = 0
    name: str = "dataset"
    info: dict = field(default_factory=dict)  # what the checkpoint needs to rebuild the test transform
    seed: int = 0  # training order and augmentations (set from the run's seed by the protocols)

    def __post_init__(self) -> None:
        check_count("dataset.batch_size", self.batch_size, 1)
        check_count("dataset.num_workers", self.num_workers, 0)
        self.num_workers = usable_workers(self.num_workers)
        a = self.augment
        self.info.update(resize=a.resize, crop=a.crop, padding=a.padding)

    def summary(self) -> dict:
        """What training would see (``python -m hrn.inspect``): the tree's level sizes, each split's size and how
        many of its samples carry a label at each level, and what the protocols relabelled and degraded."""
        h = self.hierarchy
        protocol = self.info.get("protocol", {})
        out = {"dataset": self.name, "tree": {"levels": h.level_sizes, "num_nodes": h.num_nodes}}
        for split in ("train", "val", "test"):
            images = getattr(self, split)
            out[split] = {"num_samples": len(images), "labelled_at_level": images.labelled_at_level(h)}
        out["val_is_test"] = self.val is self.test
        out["relabelled"] = protocol.get("relabelled", 0)
        out["degraded"] = protocol.get("degraded", 0)
        out["skipped_images"] = self.info.get("skipped_images", 0)
        out["protocol"] = protocol
        return out

    def loader(self, split: str, shuffle: bool | None = None) -> DataLoader:
        """A loader over ``split`` yielding :class:`Batch` es of uint8 images (normalise them on the device:
        :func:`~hrn.data.augment.normalize`); training shuffles, crops and flips as a function of (seed, epoch).
        Evaluation drops nothing, so every image counts; in a shuffled epoch, a process's last batch that would hold
        a single image leaves that one out (another each epoch), since BatchNorm cannot train on a batch of one
        (:class:`EpochShuffleSampler`)."""
        dataset = getattr(self, split)
        if len(dataset) == 0:
            raise DataError(
                f"the {self.name} {split} split has no samples; check the dataset's split settings"
            )
        shuffle = (split == "train") if shuffle is None else shuffle
        if shuffle and len(dataset) < 2:
            raise DataError(
                f"the {self.name} {split} split has {len(dataset)} image; training needs at least 2 (BatchNorm "
                "cannot train on a batch of one): add images, or move some from the other splits"
            )
        dataset.prepare()
        return self._loader(split, dataset, shuffle)

    def _loader(self, split: str, dataset: LabelledImages, shuffle: bool) -> DataLoader:
        """The loader itself, once :meth:`loader` has checked the split (a subclass may stream one instead)."""
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed, self.batch_size) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=collated,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
