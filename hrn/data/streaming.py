"""Training from shards as litdata streams them: ``dataset=shards dataset.stream=true``.

litdata's ``StreamingDataset`` shuffles the chunks and the samples inside them (a new order each epoch, from the
run's seed), splits them across ranks and loader workers, and drops the tail so every rank gets as many samples;
``StreamingDataLoader`` keeps how far an epoch got, which Lightning saves in each checkpoint, so a resumed run goes
on from the sample it had reached. Each sample then becomes what every loader of the package gives: the crop and
flip of ``(seed, epoch, index)``, the label of the (possibly relabelled) split, the degraded image where the
protocol chose it.

The order is litdata's, not :class:`~hrn.data.base.EpochShuffleSampler`'s: a streamed run is reproducible for a
seed and a number of ranks and workers, but it is not the run on the dataset the shards came from (reading by index,
``dataset.stream=false``, is that, bit for bit). Validation and test always read by index: nothing dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import DataLoader

from hrn.data.augment import downsample, resize_image, window
from hrn.data.base import Batch, DataSplits, LabelledImages

__all__ = ["StreamedImages", "StreamedSplits", "stacked", "streaming_loader"]


class StreamedImages(StreamingDataset):
    """A training split streamed from its shards (``folder``), its samples cropped, flipped and labelled as
    ``images`` (the split as the protocols left it) says; ``seed``: the run's, for litdata's order and the crops."""

    def __init__(self, folder: str, images: LabelledImages, seed: int, cache_dir: str | None = None) -> None:
        # drop_last: every rank the same number of samples; batch_decode=0: each sample decoded on its own
        super().__init__(folder, cache_dir=cache_dir, shuffle=True, drop_last=True, seed=seed, batch_decode=0)
        self.images, self.crop_seed = images, seed

    def _rank_now(self) -> None:
        # the loader is made before Lightning starts the process group; litdata reads the ranks when the dataset
        # is made, so read them again once the group exists (before an epoch, and for its length)
        from litdata.utilities.env import _DistributedEnv

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.distributed_env = _DistributedEnv.detect()
            self.drop_last = True

    def set_epoch(self, current_epoch: int) -> None:
        self._rank_now()
        super().set_epoch(current_epoch)

    def get_len(self, num_workers: int, batch_size: int) -> int:  # what StreamingDataLoader's len() asks
        self._rank_now()
        return super().get_len(num_workers, batch_size)

    def __getitem__(self, index: Any) -> Batch:
        """One sample: uint8 image (3, crop, crop), target and index, as :class:`LabelledImages` gives it."""
        item = super().__getitem__(index)
        i, a = int(item["index"]), self.images.augment
        image = torch.from_numpy(item["image"])
        scale = self.images.scale(i)
        if scale < 1.0:
            # the degrade protocol, on the stored (already resized) image, as reading by index does
            image = resize_image(downsample(image, scale), a.resize)
        out = np.empty((3, a.crop, a.crop), dtype=np.uint8)
        # litdata counts epochs from 1, Lightning (and the by-index crops) from 0
        window(image, a.params(self.crop_seed, self.current_epoch - 1, i), a, out)
        return Batch(torch.from_numpy(out), torch.tensor(self.images.targets[i]), torch.tensor(i))


def stacked(samples: list[Batch]) -> Batch:
    """The streamed loader's collate function: samples -> one :class:`Batch`."""
    return Batch(
        torch.stack([s.images for s in samples]),
        torch.stack([s.targets for s in samples]),
        torch.stack([s.index for s in samples]),
    )


def streaming_loader(
    folder: str,
    images: LabelledImages,
    seed: int,
    batch_size: int,
    num_workers: int,
    cache_dir: str | None = None,
) -> StreamingDataLoader:
    """litdata's loader over the streamed training split (its state goes into each checkpoint through Lightning);
    ``cache_dir``: where litdata keeps a remote set's chunks."""
    return StreamingDataLoader(
        StreamedImages(folder, images, seed, cache_dir),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=stacked,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


@dataclass
class StreamedSplits(DataSplits):
    """A shard set's splits whose training loader streams (:func:`streaming_loader` over ``train_folder``), after
    the checks of :meth:`DataSplits.loader`; validation, test and any unshuffled loader read by index, as there."""

    train_folder: str = ""
    train_cache: str | None = None

    def _loader(self, split: str, dataset: LabelledImages, shuffle: bool) -> DataLoader:
        if split != "train" or not shuffle:
            return super()._loader(split, dataset, shuffle)
        return streaming_loader(
            self.train_folder, dataset, self.seed, self.batch_size, self.num_workers, self.train_cache
        )
