"""Tiny copies of each dataset in its real on-disk layout, written by the tests (a few small JPEGs per class)."""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

import numpy as np
from PIL import Image

from hrn.data.files import shipped

SIZE = 16


def jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(path, quality=90)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_cub(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> Path:
    """CUB_200_2011 as distributed. Training images are the first of each class in the authors' list, written to
    images.txt in *sorted* order so the loader has to restore the authors' order."""
    base = root / "CUB_200_2011"
    authors = shipped("cub_train_order.txt").read_text().split()
    folders = {}
    train: dict[str, list[str]] = {}
    for rel in authors:
        folder = rel.split("/")[0]
        folders[int(folder.split(".")[0])] = folder
        if len(train.setdefault(folder, [])) < train_per_class:
            train[folder].append(rel)
    rows = []  # (rel, class id, is_train)
    for cid, folder in sorted(folders.items()):
        rows += [(rel, cid, 1) for rel in sorted(train[folder])]
        rows += [(f"{folder}/test_{i}.jpg", cid, 0) for i in range(test_per_class)]
    for i, (rel, _, _) in enumerate(rows):
        jpeg(base / "images" / rel, i)
    write_lines(base / "classes.txt", [f"{cid} {folder}" for cid, folder in sorted(folders.items())])
    write_lines(base / "images.txt", [f"{i + 1} {rel}" for i, (rel, _, _) in enumerate(rows)])
    write_lines(base / "image_class_labels.txt", [f"{i + 1} {cid}" for i, (_, cid, _) in enumerate(rows)])
    write_lines(base / "train_test_split.txt", [f"{i + 1} {t}" for i, (_, _, t) in enumerate(rows)])
    return root


def aircraft_names() -> dict[str, tuple[str, str]]:
    """variant -> (family name, maker name) following the shipped tree; one family shares its variant's name."""
    out = {}
    with shipped("aircraft.csv").open() as f:
        rows = list(csv.DictReader(f))
    maker_of = {r["child"]: r["parent"] for r in rows if r["parent"].startswith("maker_")}
    for r in rows:
        if r["parent"].startswith("family_"):
            fam = r["parent"]
            out[r["child"]] = (f"Family {fam[7:]}", f"Maker {maker_of[fam][6:]}")
    # The real dataset has families named like their only variant (e.g. "DHC-1"): keep that case in the fixture.
    lone = next(v for v, (fam, _) in out.items() if sum(f == fam for f, _ in out.values()) == 1)
    out[lone] = (lone, out[lone][1])
    return out


def write_aircraft(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    names = aircraft_names()
    ids = {"trainval": [], "test": []}
    variant_of = {}
    authors = iter(shipped("aircraft_trainval_order.txt").read_text().split())  # real ids, the authors' order
    n = 0
    for variant in names:
        for split, k in (("trainval", train_per_class), ("test", test_per_class)):
            for _ in range(k):
                image_id = next(authors) if split == "trainval" else f"{9000000 + n:07d}"
                n += 1
                ids[split].append(image_id)
                variant_of[image_id] = variant
                jpeg(data / "images" / f"{image_id}.jpg", n)
    for split, members in ids.items():
        members.sort()  # the loader has to restore the authors' order
        write_lines(data / f"images_variant_{split}.txt", [f"{i} {variant_of[i]}" for i in members])
        write_lines(data / f"images_family_{split}.txt", [f"{i} {names[variant_of[i]][0]}" for i in members])
        write_lines(
            data / f"images_manufacturer_{split}.txt", [f"{i} {names[variant_of[i]][1]}" for i in members]
        )
    return root


def cars_rows(split: str, per_class: int) -> list[tuple[str, str]]:
    """The first ``per_class`` rows of each model in the authors' shipped list."""
    rows, seen = [], {}
    for line in shipped(f"cars_{split}.txt").read_text().splitlines():
        rel, model = line.split()
        if seen.get(model, 0) < per_class:
            seen[model] = seen.get(model, 0) + 1
            rows.append((rel, model))
    return rows


def write_cars_folders(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    """The authors' class-folder layout with car_train.txt / car_test.txt beside the folders."""
    for split, k in (("train", train_per_class), ("test", test_per_class)):
        rows = cars_rows(split, k)
        for i, (rel, _) in enumerate(rows):
            jpeg(root / rel, i)
        write_lines(root / f"car_{split}.txt", [f"{rel} {model}" for rel, model in rows])
    return root


def write_cars_torchvision(root: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    """torchvision's StanfordCars layout, with the devkit's .mat files."""
    from scipy.io import savemat

    base = root / "stanford_cars"
    names = {}
    for rel, model in cars_rows("train", 1):
        names[int(model)] = rel.split("/")[0].replace("_", " ")
    class_names = np.array([names[i] for i in range(1, 197)], dtype=object)
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": class_names})
    n = 0
    for split, k, mat in (
        ("train", train_per_class, base / "devkit" / "cars_train_annos.mat"),
        ("test", test_per_class, base / "cars_test_annos_withlabels.mat"),
    ):
        records = []
        for model in range(1, 197):
            for _ in range(k):
                n += 1
                fname = f"{n:05d}.jpg"
                jpeg(base / f"cars_{split}" / fname, n)
                records.append((fname, model))
        annos = np.array(records, dtype=[("fname", "O"), ("class", "O")])
        savemat(mat, {"annotations": annos})
    return root


def write_folder(root: Path, with_split: bool = True, per_leaf: int = 4) -> Path:
    """A user's own 3-level taxonomy with some coarse-labelled rows."""
    edges = [
        ("Animal", "Bird"),
        ("Animal", "Fish"),
        ("Bird", "Sparrow"),
        ("Bird", "Crow"),
        ("Fish", "Cod"),
        ("Plant", "Tree"),
        ("Tree", "Oak"),
        ("Tree", "Pine"),
    ]
    write_lines(root / "tree.csv", ["parent,child"] + [f"{p},{c}" for p, c in edges])
    leaves = ["Sparrow", "Crow", "Cod", "Oak", "Pine"]
    rows = []
    rng = random.Random(0)
    for leaf in leaves:
        for i in range(per_leaf):
            rows.append((f"img/{leaf}_{i}.jpg", leaf, ["train", "train", "val", "test"][i % 4]))
    rows += [("img/bird_x.jpg", "Bird", "train"), ("img/plant_x.jpg", "Plant", "train")]  # coarse labels
    for i, (rel, _, _) in enumerate(rows):
        jpeg(root / rel, i)
    rng.shuffle(rows)
    header = "path,label,split" if with_split else "path,label"
    write_lines(root / "labels.csv", [header] + [",".join(r if with_split else r[:2]) for r in rows])
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file's bytes: magic 0x000008DD (uint8, DD dimensions), big-endian int32 sizes, the uint8 payload."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed like the distributed files when ``compress``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path


def fashion_mnist_arrays(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) labels 0..9, classes interleaved in a seeded order (as in the real
    files, which are not sorted by class). Each image has its class id in pixel (0, 0), so tests can check it."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), n_per_class))
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels
    return images, labels


def write_fashion_mnist(
    root: Path, train_per_class: int = 6, test_per_class: int = 2, layout: str = "flat", compress: bool = True
) -> Path:
    """The four Fashion-MNIST IDX files; ``layout="flat"``: in ``root`` itself (the Debian package's folder),
    ``"torchvision"``: in ``root/FashionMNIST/raw/``. Returns the ``dataset.root`` to pass."""
    folder = root / "FashionMNIST" / "raw" if layout == "torchvision" else root
    suffix = ".gz" if compress else ""
    for prefix, n, seed in (("train", train_per_class, 0), ("t10k", test_per_class, 1)):
        images, labels = fashion_mnist_arrays(n, seed)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return root


def synthetic_image_files(folder: Path, leaves: list[int], size: int = 32, seed: int = 0) -> list[Path]:
    """PNG files of the synthetic dataset's images, one per leaf index given (0..11), ``img{i}.png``."""
    import torch

    from hrn.data.synthetic import make_images

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, image in enumerate(make_images(torch.tensor(leaves), size, torch.Generator().manual_seed(seed))):
        out.append(folder / f"img{i:02d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(out[-1])
    return out


def train_tiny(run_dir: Path, *overrides: str) -> dict[str, float]:
    """``hrn.train`` of the tests' tiny synthetic setting (``tests.test_train.TINY``) and ``overrides``, into
    ``run_dir``; returns the test metrics."""
    from hydra import compose, initialize_config_dir

    from hrn.cli.config import CONF_DIR
    from hrn.train import train
    from tests.test_train import TINY

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={run_dir}", *TINY, *overrides])
    return train(cfg)
