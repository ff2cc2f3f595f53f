"""A dataset as LitData shards: written once by ``python -m hrn.shard``, read back by ``litdata.StreamingDataset``.

Layout of ``out``::

    out/train/  out/val/  out/test/     litdata's chunks (``chunk-*.bin``) and ``index.json``, one set per split
                                        (no val/ for a dataset that validates on its test split: test serves both)
    out/hrn.json                        the tree (names included), the split sizes, the transform sizes and the
                                        source dataset's settings; written last: a set without it is incomplete

Each sample is ``{"image": (3, S, S) uint8, "label": node index, "index": its position}``, its id (the source's
file path or name) the position's entry of ``hrn-ids.json`` beside the split's chunks: the image after
the dataset's decode and resize to ``resize`` (not cropped, flipped or normalised: those stay the training
transform's), the label as the dataset gives it (relabelling and degrading stay protocol steps of training, so one
shard set serves a whole relabel sweep). uint8 arrays rather than JPEG: the pixels are the cache's exactly, with
no second lossy encoding, and need no decoding to read.

LitData does the chunking, the parallel writing and later the streaming (local disks, shared file systems and the
object stores it supports); nothing here shards by hand.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import shutil
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hrn.atomic import write_json
from hrn.data.augment import Augment, downsample, resize_image
from hrn.data.base import DataError, DataSplits, ImageSource, LabelledImages
from hrn.tree import Hierarchy

__all__ = [
    "MANIFEST",
    "REMOTE_PREFIXES",
    "SPLITS",
    "ShardImages",
    "is_remote",
    "read_manifest",
    "shards",
    "write_shards",
]

MANIFEST = "hrn.json"
# fork where there is one: the writers inherit the loaded dataset, where spawning would import torch afresh in each
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
SPLITS = ("train", "val", "test")
LABELS, IDS = "hrn-labels.npy", "hrn-ids.json"  # beside litdata's files in each split's folder
KEEP_MAPPED = 4096  # chunk maps a by-index reader keeps open (64 MB chunks: 256 GB of shards)
FORMAT = 1


def _sample(i: int, images: LabelledImages) -> dict:
    """Sample ``i`` of a split as litdata stores it (a top-level function: litdata's workers pickle it)."""
    if torch.get_num_threads() != 1:
        # a forked writer must not enter the parent's OpenMP pool (it hangs there); DataLoader workers do the same
        torch.set_num_threads(1)
    return {
        "image": np.ascontiguousarray(images.source(i).numpy()),
        "label": int(images.targets[i]),
        # the position, not the path: litdata would store a string naming an existing file as that file's bytes
        "index": i,
    }


def read_manifest(out: str | Path) -> dict | None:
    """``out/hrn.json`` when the shard set is complete; None when it is not there yet."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(
            f"{path}: not a readable shard manifest ({e}); delete {out} and write it again"
        ) from None


def write_shards(
    data: DataSplits, out: str | Path, source: Mapping, *,
    chunk_bytes: str = "64MB", num_workers: int = 1, optimize: Callable | None = None,
) -> dict:  # fmt: skip
    """Write ``data``'s splits under ``out`` (the module docstring's layout) and return the manifest.

    ``source``: the dataset's settings (its config), recorded in the manifest; a complete ``out`` written from
    the same settings is left as it is (returned at once), one written from other settings is an error. Each split
    is written to a temporary folder beside its final one and renamed once litdata has finished it; the manifest is
    written last, atomically, so an interrupted write never reads as complete."""
    if is_remote(str(out)):  # Path() would make a local folder named "s3:" out of the URL
        raise DataError(
            f"out={out}: shards are written to a local or shared folder; copy that folder to object storage after"
        )
    if optimize is None:
        from litdata import optimize  # the `scale` extra: imported only where shards are written
    out = Path(out)
    manifest = {
        "format": FORMAT,
        "tree": data.hierarchy.to_dict(),
        "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "val_is_test": data.val is data.test,
        "transform": {
            "resize": data.augment.resize,
            "crop": data.augment.crop,
            "padding": data.augment.padding,
        },
        "dataset": dict(source),
        "name": data.name,
    }
    done = read_manifest(out)
    if done is not None:
        if {k: done.get(k) for k in manifest} != json.loads(json.dumps(manifest)):
            raise DataError(
                f"out={out}: holds the shards of other dataset settings; give another folder or delete it"
            )
        return done
    out.mkdir(parents=True, exist_ok=True)
    # a dataset that validates on its test split has those images once: the reader serves them as both
    for split in ("train", "test") if manifest["val_is_test"] else SPLITS:
        images = getattr(data, split)
        final, partial_dir = out / split, out / f".{split}.partial"
        for stale in (final, partial_dir):  # an interrupted earlier write: start the split again
            if stale.exists():
                shutil.rmtree(stale)
        optimize(
            fn=partial(_sample, images=images),
            inputs=list(range(len(images))),
            output_dir=str(partial_dir),
            chunk_bytes=chunk_bytes,
            num_workers=num_workers,
            mode="overwrite",
            start_method=START_METHOD,
            keep_data_ordered=True,  # the written order is the dataset's, so sample i is sample i
        )
        # the labels and ids beside the chunks: a reader builds its split without a pass over the images
        np.save(partial_dir / LABELS, np.asarray(images.targets, dtype=np.int64))
        (partial_dir / IDS).write_text(json.dumps([str(p) for p in images.paths]))
        partial_dir.rename(final)
    write_json(out / MANIFEST, manifest)
    return manifest


class ShardImages(ImageSource):
    """A split's images from its shards, by index through ``litdata.StreamingDataset`` (opened on first use, so
    each loader worker opens its own). ``scale`` below 1 (the degrade protocol) downsamples the stored, already
    resized image, where the file datasets downsample the original."""

    def __init__(self, folder: str, size: int, length: int, cache_dir: str | None = None) -> None:
        self.folder, self.size, self.length, self.cache_dir = folder, size, length, cache_dir
        self._stream = None

    def __len__(self) -> int:
        return self.length

    def __call__(self, i: int, scale: float = 1.0) -> torch.Tensor:
        if self._stream is None:
            from litdata import StreamingDataset

            # decode the asked-for sample alone: litdata's default decodes a window of its neighbours with it,
            # which reading by index in a shuffled order throws away (174 against 15,000 images/s, 550 px)
            self._stream = StreamingDataset(
                self.folder, cache_dir=self.cache_dir, batch_decode=0, **self._keep_mapped()
            )
        image = torch.from_numpy(self._stream[i]["image"])
        return resize_image(downsample(image, scale), self.size) if scale < 1.0 else image

    def _keep_mapped(self) -> dict:
        """A local set's chunks are memory-mapped in place, and litdata keeps ``max(4, max_pre_download)`` maps
        open; reading by index in a shuffled order jumps between chunks, so keep a map of every chunk (up to
        :data:`KEEP_MAPPED`): 6,200 -> 44,000 samples/s on 100,000 32 px samples in 5 chunks. (The maps hold
        address space, not memory: a page is read in when touched, and the kernel may drop it.) A remote set
        keeps litdata's default, where the number also bounds the chunks downloaded ahead."""
        if self.cache_dir is not None:
            return {}
        try:
            chunks = len(json.loads((Path(self.folder) / "index.json").read_text())["chunks"])
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {"max_pre_download": max(2, min(chunks, KEEP_MAPPED))}

    def __getstate__(self) -> dict:  # a worker opens its own stream
        return {**self.__dict__, "_stream": None}


REMOTE_PREFIXES = ("s3://", "gs://", "azure://", "hf://", "r2://", "local:")
"""The URL schemes litdata's downloaders serve (``local:`` copies a local folder as if it were remote: its tests')."""


def is_remote(root: str) -> bool:
    return str(root).startswith(REMOTE_PREFIXES) or "://" in str(root)


def _fetch(root: str, names: list[str]) -> dict[str, bytes | None]:
    """The small files ``names`` of the shard set at ``root`` (manifest, labels, ids), as bytes (None when one is
    not there): read from the folder, or for a URL fetched through litdata's own downloader for its scheme into a
    temporary folder, read and deleted (a stale copy is never read)."""
    if not is_remote(root):
        return {n: (Path(root) / n).read_bytes() if (Path(root) / n).is_file() else None for n in names}
    import tempfile

    from litdata.streaming.downloader import get_downloader

    got: dict[str, bytes | None] = {}
    with tempfile.TemporaryDirectory(prefix="hrn-shards-") as tmp:
        downloader = get_downloader(root, tmp, [])
        for n in names:
            local = Path(tmp) / n.replace("/", "_")
            try:
                downloader.download_file(f"{root.rstrip('/')}/{n}", str(local))
            except FileNotFoundError:
                got[n] = None
                continue
            except Exception as e:  # the object store's own errors (credentials, network, a missing client)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise DataError(
                    f"dataset.root={root}: cannot fetch {n} ({type(e).__name__}: {first})"
                ) from None
            got[n] = local.read_bytes() if local.is_file() else None
    return got


def shards(
    root: str, batch_size: int = 32, num_workers: int = 0, crop: int | None = None, padding: int | None = None,
    stream: bool = False, cache_dir: str | None = None,
) -> DataSplits:  # fmt: skip
    """The shard set at ``root`` (``hrn.shard``'s ``out``: a folder, or a URL litdata reads, :data:`REMOTE_PREFIXES`)
    as the package's splits: the tree, sizes and transform of its manifest (``crop`` and ``padding`` may be changed,
    not ``resize``: the images are stored at it), the images read by index from litdata's shards, and the same
    samplers, crops and protocols as every other dataset, so a run on shards equals the run on the dataset they were
    written from, bit for bit (relabelling included). ``stream``: the training loader streams instead, through
    litdata's own loader (:mod:`hrn.data.streaming`). ``cache_dir``: where litdata keeps the chunks of a remote set
    (default ``<hrn cache>/shards/<hash of root>``); a local set is read in place."""
    root = str(root)
    remote = is_remote(root)
    manifest_bytes = _fetch(root, [MANIFEST])[MANIFEST]
    if manifest_bytes is None:
        raise DataError(
            f"dataset.root={root}: no complete shard set ({MANIFEST} missing); write one with python -m hrn.shard"
        )
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as e:
        raise DataError(f"dataset.root={root}: {MANIFEST} is not a readable shard manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"dataset.root={root}: shard format {manifest.get('format')!r}; this hrn reads {FORMAT}"
        )
    h = Hierarchy.from_dict(manifest["tree"])
    t = manifest["transform"]
    augment = Augment(
        t["resize"], t["crop"] if crop is None else crop, t["padding"] if padding is None else padding
    )
    if remote and cache_dir is None:
        from hrn.data.cache import default_cache_dir

        cache_dir = str(default_cache_dir() / "shards" / hashlib.sha256(root.encode()).hexdigest()[:16])
    names = ("train", "test") if manifest.get("val_is_test") else SPLITS
    small = _fetch(root, [f"{split}/{name}" for split in names for name in (LABELS, IDS)])
    splits = {}
    for split in names:
        folder = f"{root.rstrip('/')}/{split}" if remote else str(Path(root) / split)
        try:
            targets = np.load(io.BytesIO(small[f"{split}/{LABELS}"])).tolist()
            paths = json.loads(small[f"{split}/{IDS}"])
        except (TypeError, ValueError) as e:  # TypeError: a file that is not there (None)
            raise DataError(
                f"dataset.root={root}: the {split} split's labels or ids do not read ({e})"
            ) from None
        chunks = str(Path(cache_dir) / split) if remote else None
        splits[split] = LabelledImages(
            ShardImages(folder, augment.resize, len(targets), chunks), targets, paths, augment
        )
    # written from a dataset that validates on its test split (stored once, as test): so does this one
    splits.setdefault("val", splits["test"])
    settings = dict(
        augment=augment, batch_size=batch_size, num_workers=num_workers,
        name=f"shards of {manifest.get('name', 'a dataset')}",
    )  # fmt: skip
    if stream:
        from hrn.data.streaming import StreamedSplits

        train = splits["train"].source
        return StreamedSplits(h, **splits, **settings, train_folder=train.folder, train_cache=train.cache_dir)
    return DataSplits(h, **splits, **settings)
