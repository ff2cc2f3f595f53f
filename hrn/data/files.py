"""Image files on disk, shared by every real dataset: check them before training, decode and resize them (or read
them from the image cache), split a validation set off the training list, and turn a labelled file list into
:class:`DataSplits`."""

from __future__ import annotations

import csv
import glob
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from hrn.data.augment import Augment, default_padding, downsample, resize_image
from hrn.data.base import DataError, DataSplits, ImageSource, LabelledImages
from hrn.data.cache import CachedFiles
from hrn.tree import Hierarchy

__all__ = [
    "IMAGE_SUFFIXES",
    "DecodedFiles",
    "FileSettings",
    "ImageFiles",
    "Sample",
    "check_images",
    "expand_images",
    "held_out",
    "make_splits",
    "shipped",
    "shipped_names",
    "split_off_validation",
]

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).resolve().parent.parent / "trees"


def shipped(name: str) -> Path:
    """Path of a tree or list shipped with the package (``hrn/trees/``)."""
    return SHIPPED / name


def shipped_names(name: str) -> dict[str, str]:
    """``node id -> name`` from a table shipped beside a tree (``hrn/trees/<name>``, header ``id,name``).

    The authors' trees number their coarse nodes ("family_35"); the table keeps those ids beside the real names
    so the tree CSV stays the authors' and every name can be traced back to its id.
    """
    with shipped(name).open(newline="", encoding="utf-8") as f:
        return {row["id"]: row["name"] for row in csv.DictReader(f)}


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path and the node index of its label."""

    path: Path
    target: int


class ImageFiles:
    """``load(i)``: the i-th file as an RGB PIL image; a file that fails to decode names itself."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __call__(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from None


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


class DecodedFiles(ImageSource):
    """Decodes each image whenever it is asked for, then downsamples (degrade protocol) and resizes it to
    (3, S, S): the reference path, and what the image cache (``hrn.data.cache``) stores."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.files = ImageFiles(paths)
        self.paths = self.files.paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, i: int, scale: float = 1.0) -> torch.Tensor:
        image = self.files(i)
        if scale < 1.0:
            image = downsample(image, scale)
        return resize_image(image, self.size)


def _decodes(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()  # reads the headers and checks structure without a full decode
        return True
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


def check_images(samples: list[Sample], on_bad_image: str, what: str) -> tuple[list[Sample], int]:
    """Check, before any training, that every listed image exists and decodes.

    A missing file is always an error (the list and the folder disagree: a wrong ``root``, most likely). An
    undecodable file is an error with ``on_bad_image="error"``; with ``"skip"`` it is dropped, counted and logged.
    Returns the kept samples and the number skipped.
    """
    if on_bad_image not in ("error", "skip"):
        raise DataError(f"dataset.on_bad_image={on_bad_image!r}: expected 'error' or 'skip'")
    kept, skipped = [], 0
    for s in samples:
        if not s.path.is_file():
            raise DataError(f"{s.path}: image listed in {what} but absent; check dataset.root")
        if _decodes(s.path):
            kept.append(s)
        elif on_bad_image == "skip":
            skipped += 1
            log.warning("skipping undecodable image %s", s.path)
        else:
            raise DataError(
                f"{s.path}: cannot decode the image; replace the file or set dataset.on_bad_image=skip"
            )
    if skipped:
        log.warning("%s: skipped %d undecodable image(s)", what, skipped)
    return kept, skipped


def held_out(targets: Sequence[int], fraction: float, seed: int) -> set[int]:
    """Positions of a seeded, per-class share of ``targets`` to hold out: ``round(n · fraction)`` of each label's
    n samples (at least one when the label has two or more)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(
            f"dataset.val_fraction={fraction!r} must be in [0, 1) (0 = validate on the test split)"
        )
    by_label: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_label.setdefault(t, []).append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for label in sorted(by_label):
        members = by_label[label]
        k = round(len(members) * fraction)
        if fraction > 0 and k == 0 and len(members) >= 2:
            k = 1
        held.update(rng.sample(members, k))
    return held


def split_off_validation(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out a seeded, per-class share of ``samples`` for validation (:func:`held_out`). The rest keep their
    list order."""
    held = held_out([s.target for s in samples], fraction, seed)
    train = [s for i, s in enumerate(samples) if i not in held]
    val = [s for i, s in enumerate(samples) if i in held]
    return train, val


@dataclass(frozen=True)
class FileSettings:
    """The loader settings every dataset read from image files takes (``cub``, ``aircraft``, ``cars``, ``folder``),
    under the same config keys (``dataset.batch_size``, ...).

    Attributes:
        batch_size, num_workers: the loaders'.
        resize, crop, padding: the paper's transforms, Resize(resize) -> RandomCrop(crop, padding) (test: the centre
            crop); ``padding=None`` scales the paper's 8 px at 448 with the crop.
        cache, cache_dir: serve the resized images from the on-disk cache (``hrn.data.cache``, in ``cache_dir``),
            built on first use; ``cache=False`` decodes every image every epoch.
        val_fraction, split_seed: a seeded per-class share of the training images held out for validation;
            ``val_fraction=0`` validates on the test split, as the authors did (model selection on test).
        on_bad_image: ``"error"``, or ``"skip"`` undecodable images (counted and logged).
    """

    batch_size: int = 32
    num_workers: int = 4
    resize: int = 550
    crop: int = 448
    padding: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    on_bad_image: str = "error"

    @classmethod
    def of(cls, dataset: str, settings: Mapping, **defaults) -> FileSettings:
        """The settings a dataset factory was given (``settings``, its keyword arguments) over that dataset's own
        ``defaults``; a key that is not a setting is one line naming the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise DataError(
                f"dataset.{unknown[0]}: not a setting of the {dataset} dataset; its loader settings are "
                f"{', '.join(names)}"
            )
        return cls(**{**defaults, **settings})

    def augment(self) -> Augment:
        return Augment(
            self.resize, self.crop, default_padding(self.crop) if self.padding is None else self.padding
        )


def make_splits(
    name: str,
    hierarchy: Hierarchy,
    train: list[Sample],
    test: list[Sample],
    settings: FileSettings,
    *,
    val: list[Sample] | None = None,
    source: str = "the dataset's index files",
) -> DataSplits:
    """Check the files, hold out validation (unless ``val`` is given) and build :class:`DataSplits` with the
    loader ``settings``."""
    s = settings
    augment = s.augment()
    for split, samples in (("train", train), ("test", test)):
        if not samples:
            raise DataError(f"the {name} {split} split has no samples; check {source}")
    train, skipped_train = check_images(train, s.on_bad_image, source)
    test, skipped_test = check_images(test, s.on_bad_image, source)
    skipped = skipped_train + skipped_test
    if val is None:
        if s.val_fraction == 0:
            val = test
        else:
            train, val = split_off_validation(train, s.val_fraction, s.split_seed)
    else:
        val, skipped_val = check_images(val, s.on_bad_image, source)
        skipped += skipped_val
    for split, samples in (("train", train), ("val", val), ("test", test)):
        if not samples:
            raise DataError(f"the {name} {split} split has no samples; check {source}")

    def images(samples: list[Sample], split: str) -> LabelledImages:
        paths = [s.path for s in samples]
        files: ImageSource = DecodedFiles(paths, s.resize)
        if s.cache:
            files = CachedFiles(files, f"{name}-{split}", s.cache_dir, s.num_workers)
        return LabelledImages(files, [s.target for s in samples], [str(p) for p in paths], augment)

    test_images = images(test, "test")
    return DataSplits(
        hierarchy,
        images(train, "train"),
        test_images if val is test else images(val, "val"),
        test_images,
        augment,
        batch_size=s.batch_size,
        num_workers=s.num_workers,
        name=name,
        info={"skipped_images": skipped, "val_on_test": val is test},
    )


def read_pairs(path: Path, layout: str) -> list[tuple[str, str]]:
    """Lines ``<key> <value ...>`` of an index file (the value may hold spaces). ``layout`` is named in the error
    when the file is missing."""
    if not path.is_file():
        raise DataError(f"{path}: index file not found; expected {layout}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a readable UTF-8 text file ({e})") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<key> <value>', found {line.strip()!r}")
        out.append((parts[0], parts[1].strip()))
    return out


def order_by_list(samples: list[Sample], keys: list[str], order: list[str], what: str) -> list[Sample]:
    """Reorder ``samples`` (keyed by ``keys``) as in the authors' ``order`` list; samples the list does not name
    keep their own order after the listed ones. The relabel protocol keeps the *first* images of each class, so
    this order decides which images lose their leaf label (``relabel.order=file``)."""
    position = {k: i for i, k in enumerate(order)}
    missing = sum(k not in position for k in keys)
    if missing:
        log.warning("%s: %d training image(s) are not in the authors' list; they go last", what, missing)
    ranked = sorted(range(len(samples)), key=lambda i: (position.get(keys[i], len(position)), i))
    return [samples[i] for i in ranked]
