"""Fashion-MNIST (Xiao et al., 2017) under a two-level hierarchy: 2 groups -> 6 kinds -> its 10 classes.

The four IDX files as distributed (gzip-compressed or not), found in ``root`` itself (the Debian package
``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``, the default) or in torchvision's
``root/FashionMNIST/raw/`` (``torchvision.datasets.FashionMNIST(root, download=True)``)::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]  t10k-images-idx3-ubyte[.gz]  t10k-labels-idx1-ubyte[.gz]

The official split (60,000 / 10,000). Samples keep the files' order, so ``relabel.order=file`` relabels the last
images of each class in the training file, and a sample's name ``fashion_mnist/train/01234`` is its position there.
The 28 x 28 grey images stay in memory as uint8 (one channel, resized once) and are served as crop windows of 3
equal channels (the trunk expects RGB): a batch costs a few microseconds an image, not a decode.
The tree ships with the package (``hrn/trees/fashion_mnist.csv``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from hrn.data.augment import Augment, default_padding
from hrn.data.base import DataError, DataSplits, LabelledImages, TensorImages
from hrn.data.files import held_out, shipped
from hrn.data.idx import read_images_and_labels
from hrn.tree import Hierarchy

__all__ = ["fashion_mnist", "fashion_mnist_hierarchy", "find_files", "CLASSES", "DEBIAN_ROOT"]

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = (  # by label id, as in the labels files
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
)  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO_GET = (
    f"get them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu: files in {DEBIAN_ROOT}, the default "
    "dataset.root) or with `torchvision.datasets.FashionMNIST(ROOT, download=True)` in Python, then pass "
    "dataset.root=ROOT (the files land in ROOT/FashionMNIST/raw/)"
)


def fashion_mnist_hierarchy() -> Hierarchy:
    """Clothes -> {Tops, Bottoms, Dresses, Outers}, Goods -> {Accessories, Shoes} -> the 10 classes."""
    return Hierarchy.from_csv(shipped("fashion_mnist.csv"))


def find_files(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images, labels), "test": (...)}`` from ``root`` or ``root/FashionMNIST/raw`` (also
    ``root/raw``); an uncompressed file is preferred to its ``.gz`` (no decompression)."""
    base = Path(root).expanduser()
    names = [n for pair in FILES.values() for n in pair]
    for folder in (base, base / "FashionMNIST" / "raw", base / "raw"):
        found = {}
        for name in names:
            found[name] = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if not any(found.values()):
            continue
        missing = [n for n, p in found.items() if p is None]
        if missing:
            raise DataError(
                f"dataset.root={root}: {folder} lacks {', '.join(f'{n}[.gz]' for n in missing)}; {HOW_TO_GET}"
            )
        return {split: (found[i], found[lab]) for split, (i, lab) in FILES.items()}
    raise DataError(
        f"dataset.root={root}: no Fashion-MNIST files (train-images-idx3-ubyte[.gz] ...) in {base} or "
        f"{base / 'FashionMNIST' / 'raw'}; {HOW_TO_GET}"
    )


def per_class_subset(labels: torch.Tensor, n: int | None, seed: int, key: str) -> torch.Tensor:
    """Positions of a seeded choice of ``n`` samples of each class (all of a smaller class), in file order;
    every position when ``n`` is None."""
    if n is None:
        return torch.arange(len(labels))
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(
            f"dataset.{key}={n!r}: expected a positive number of images per class, or null for all"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(chosen).sort().values


def fashion_mnist(
    root: str = DEBIAN_ROOT,
    batch_size: int = 128,
    num_workers: int = 0,
    resize: int = 32,
    crop: int = 32,
    padding: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> DataSplits:
    """Fashion-MNIST as :class:`DataSplits`.

    Args:
        val_fraction: seeded per-class share of the training images held out for validation; 0 validates on test.
        train_per_class / test_per_class: keep a seeded choice of this many images per class (taken before the
            validation split), for small studies; None keeps all.
    """
    h = fashion_mnist_hierarchy()
    leaf_of_label = torch.tensor([h.index(name) for name in CLASSES])  # label id -> node index
    files = find_files(root)
    images, labels = {}, {}
    for split, (images_path, labels_path) in files.items():
        images[split], labels[split] = read_images_and_labels(images_path, labels_path, len(CLASSES))
    keep = {
        "train": per_class_subset(labels["train"], train_per_class, split_seed, "train_per_class"),
        "test": per_class_subset(labels["test"], test_per_class, split_seed, "test_per_class"),
    }
    val_keep = None
    if val_fraction != 0:
        held = torch.zeros(len(keep["train"]), dtype=torch.bool)
        held[list(held_out(labels["train"][keep["train"]].tolist(), val_fraction, split_seed))] = True
        keep["train"], val_keep = keep["train"][~held], keep["train"][held]

    augment = Augment(resize, crop, default_padding(crop) if padding is None else padding)

    def split(source: str, positions: torch.Tensor) -> LabelledImages:
        return LabelledImages(
            TensorImages(images[source][positions][:, None], resize),  # (n, 1, 28, 28): grey, resized once
            targets=leaf_of_label[labels[source][positions]].tolist(),
            paths=[f"fashion_mnist/{source}/{i:05d}" for i in positions.tolist()],
            augment=augment,
        )

    test = split("test", keep["test"])
    return DataSplits(
        h,
        split("train", keep["train"]),
        test if val_keep is None else split("train", val_keep),
        test,
        augment,
        batch_size=batch_size,
        num_workers=num_workers,
        name="fashion_mnist",
        info={"val_on_test": val_keep is None},
    )
