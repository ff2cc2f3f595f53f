"""Data-pipeline figures: images/s of the training loader on a folder of JPEGs at the paper's sizes (decoding
every image, the image cache, the release-0.1 pipeline) and on Fashion-MNIST (in memory against the same images
as PNG files)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from hrn.benchmarks.timing import measure
from hrn.data.augment import default_padding, normalize, reference_train_transform
from hrn.data.base import DataError
from hrn.data.files import ImageFiles

__all__ = ["bench_data", "bench_small_images", "loader_rate", "write_image_folder"]


def write_image_folder(
    root: Path, train: int, test: int, classes: int = 200, size: tuple[int, int] = (500, 375), seed: int = 0
) -> Path:
    """A ``dataset=folder`` tree of CUB-like JPEGs (``size``, quality 90; smooth colour fields with fine noise, so
    they compress and decode like photographs rather than like pure noise): ``classes`` leaves under
    ``classes // 5`` parents, ``train`` + ``test`` images listed in ``labels.csv`` with their split."""
    root.mkdir(parents=True, exist_ok=True)
    parents = max(2, classes // 5)
    edges = [f"p{c % parents},c{c}" for c in range(classes)]
    (root / "tree.csv").write_text("parent,child\n" + "\n".join(edges) + "\n")
    (root / "img").mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    rows = ["path,label,split"]
    for i in range(train + test):
        coarse = torch.rand(1, 3, 8, 10, generator=g)
        field_ = F.interpolate(coarse, size=(size[1], size[0]), mode="bicubic", align_corners=False)[0]
        pixels = (field_ + 0.08 * torch.randn(field_.shape, generator=g)).clamp(0, 1).mul(255).to(torch.uint8)
        rel = f"img/{i:05d}.jpg"
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(root / rel, quality=90)
        rows.append(f"{rel},c{i % classes},{'train' if i < train else 'test'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def loader_rate(loader, epochs: int) -> float:
    """Images/s a loader delivers over its last of ``epochs`` passes (the first starts the workers and warms the
    page cache)."""
    rate = 0.0
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        count, start = 0, time.perf_counter()
        for batch in loader:
            count += len(batch[1])
        rate = count / (time.perf_counter() - start)
    return rate


class _PerImageFloat(torch.utils.data.Dataset):
    """The pipeline before the cache (release 0.1): each worker decodes, resizes, crops, flips and normalises
    every image to float on its own, and the loader moves float (3, 448, 448) images."""

    def __init__(self, images) -> None:
        self.images = images
        self.files = ImageFiles([Path(p) for p in images.paths])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        i, seed, epoch = key
        a = self.images.augment
        image = reference_train_transform(self.files(i), a, a.params(seed, epoch, i))
        return image, self.images.targets[i]


def bench_data(quick: bool, device: torch.device, workers: int | None = None) -> dict:
    """Images/s of the training loader at the paper's sizes (Resize 550 -> crop 448, batch 32) on a folder of
    500 x 375 JPEGs, with no worker and with ``workers``: decoding every image every epoch (``dataset.cache=false``,
    the PIL path) against the memory-mapped cache of resized images (``dataset.cache=true``), both delivering
    uint8 crop windows; beside them the release-0.1 pipeline (float images made per image in the workers) and the
    rate of the batch normalisation on ``device``."""
    from torch.utils.data import DataLoader

    from hrn.data.base import EpochShuffleSampler
    from hrn.data.folder import folder

    count = 32 if quick else 480
    workers = workers if workers is not None else (2 if quick else min(8, max(1, (os.cpu_count() or 2) - 1)))
    epochs = 1 if quick else 2
    sizes = ((256, 224),) if quick else ((256, 224), (550, 448))  # (resize, crop): 224 px and the paper's 448
    rows = []
    shard_write_s = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from hrn.data.shards import shards, write_shards  # needs litdata, the scale extra
        except ImportError:
            shards = None
        root = write_image_folder(Path(tmp) / "folder", count, 8, classes=8)
        for resize, crop in sizes:
            shard_set = Path(tmp) / f"shards-{crop}"
            for w in sorted({0, workers}):
                for cache in (False, True):
                    data = folder(
                        str(root), batch_size=32, num_workers=w, resize=resize, crop=crop, cache=cache,
                        cache_dir=str(Path(tmp) / "cache"), val_fraction=0,
                    )  # fmt: skip
                    start = time.perf_counter()
                    data.train.prepare()  # the cache's one-off build, timed apart
                    row = {"path": "cache" if cache else "pil", "crop": crop, "workers": w}
                    row["images_per_s"] = loader_rate(data.loader("train"), epochs)
                    if cache:
                        row["build_s"] = time.perf_counter() - start
                    rows.append(row)
                if shards is not None:  # the same images as LitData shards (written once, from the cache)
                    if not shard_set.exists():
                        start = time.perf_counter()
                        write_shards(data, shard_set, {"bench": "folder", "resize": resize})
                        shard_write_s[str(crop)] = time.perf_counter() - start
                    for path, stream in (("shards", False), ("streamed", True)):  # by index; litdata's loader
                        read = shards(str(shard_set), batch_size=32, num_workers=w, stream=stream)
                        rate = loader_rate(read.loader("train"), epochs)
                        rows.append({"path": path, "crop": crop, "workers": w, "images_per_s": rate})
                if crop == sizes[-1][1]:  # the release-0.1 pipeline, at the paper's size only
                    previous = DataLoader(
                        _PerImageFloat(data.train), batch_size=32, num_workers=w, persistent_workers=w > 0,
                        sampler=EpochShuffleSampler(len(data.train)),
                    )  # fmt: skip
                    rate = loader_rate(previous, epochs)
                    rows.append({"path": "pil_float", "crop": crop, "workers": w, "images_per_s": rate})
        images = next(iter(data.loader("train"))).images.to(device)
        seconds = measure(lambda: normalize(images), min_run_time=0.02 if quick else 0.2).median
    by = {(r["path"], r["crop"], r["workers"]): r["images_per_s"] for r in rows}
    keys = [(crop, w) for _, crop in sizes for w in sorted({0, workers})]

    def over(path: str, base: str) -> dict[str, float]:  # "crop/workers" -> images/s of path over base's
        return {f"{c}/{w}": by[(path, c, w)] / by[(base, c, w)] for c, w in keys if (path, c, w) in by}

    return {
        "images": count,
        "source": "500x375 JPEG",
        "sizes": " and ".join(f"Resize {r} -> RandomCrop {c} pad {default_padding(c)}" for r, c in sizes)
        + " -> flip -> Normalize, batch 32",
        "workers": sorted({0, workers}),
        "loaders": rows,
        "cache_speedup": over("cache", "pil"),
        "shards_vs_cache": over("shards", "cache"),
        "streamed_vs_cache": over("streamed", "cache"),
        "shard_write_s": shard_write_s,
        "transform_device": str(device),
        "transform_images_per_s": len(images) / seconds,
    }


def bench_small_images(quick: bool) -> dict:
    """Images/s of the training loader on Fashion-MNIST's real files: the built-in dataset (uint8 images in
    memory) against the same images as PNG files in the ``folder`` format (decoded every epoch, and cached), at
    the dataset recipe's sizes (28 -> 32 px, batch 128, no workers). Needs the files (the Debian package
    ``dataset-fashion-mnist``); without them the section says so."""
    from hrn.data.base import EpochShuffleSampler
    from hrn.data.fashion_mnist import DEBIAN_ROOT, fashion_mnist
    from hrn.data.folder import folder

    per_class = 10 if quick else 200
    sizes = dict(batch_size=128, num_workers=0, resize=32, crop=32, padding=2, val_fraction=0)
    try:
        memory = fashion_mnist(DEBIAN_ROOT, train_per_class=per_class, test_per_class=1, **sizes)
    except DataError as e:
        return {"skipped": str(e)}
    epochs = 2 if quick else 3
    rows = [
        {"format": "fashion_mnist (in memory)", "images_per_s": loader_rate(memory.loader("train"), epochs)}
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        h = memory.hierarchy
        edges = [f"{h.names[h.parent_of(v)]},{h.names[v]}" for v in range(h.offsets[1], h.num_nodes)]
        (root / "tree.csv").write_text("parent,child\n" + "\n".join(edges) + "\n")
        lines = ["path,label,split"]
        # the same images, as the files a user would have
        for i, image in enumerate(memory.train.source.images):
            Image.fromarray(image[0].numpy()).save(root / "img" / f"{i:05d}.png")
            lines.append(f"img/{i:05d}.png,{h.names[memory.train.targets[i]]},train")
        # a test split of one image: a copy, as a path has one label and one split
        (root / "img" / "test.png").write_bytes((root / "img" / "00000.png").read_bytes())
        lines.append(f"img/test.png,{h.names[memory.train.targets[0]]},test")
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        for cache in (False, True):
            files = folder(str(root), cache=cache, cache_dir=str(root / "cache"), **sizes)
            files.train.prepare()
            rows.append(
                {
                    "format": "folder, PNG " + ("cached" if cache else "decoded every epoch"),
                    "images_per_s": loader_rate(files.loader("train"), epochs),
                }
            )
        previous = torch.utils.data.DataLoader(
            _PerImageFloat(files.train), batch_size=128, sampler=EpochShuffleSampler(len(files.train))
        )
        rows.append(
            {"format": "folder, PNG, release 0.1 pipeline", "images_per_s": loader_rate(previous, epochs)}
        )
    return {
        "images": len(memory.train),
        "sizes": "28 -> 32 px, crop 32 pad 2, batch 128, 0 workers",
        "loaders": rows,
        "memory_vs_png": rows[0]["images_per_s"] / rows[1]["images_per_s"],
        "memory_vs_release_0_1": rows[0]["images_per_s"] / rows[3]["images_per_s"],
    }
