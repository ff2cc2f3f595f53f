"""Stanford Cars with the HRN tree: 9 car types -> 196 models (Krause et al., 2013).

Two layouts are accepted under ``root``:

1. torchvision's ``StanfordCars`` layout (read with torchvision)::

       stanford_cars/devkit/cars_meta.mat, stanford_cars/devkit/cars_train_annos.mat,
       stanford_cars/cars_test_annos_withlabels.mat, stanford_cars/cars_train/, stanford_cars/cars_test/

2. the class-folder layout of the HRN authors' lists: ``<Class_Dir>/<file>.jpg``, split by ``car_train.txt`` /
   ``car_test.txt`` (``<Class_Dir>/<file>.jpg <model id>``) in ``root`` if present, else by the authors' lists
   shipped with the package (``hrn/trees/cars_{train,test}.txt``).

The tree ships with the package (``hrn/trees/cars.csv``, from the HRN authors' ``hrn_model_type.csv``,
Apache-2.0, in their ids). Models are named by the dataset (devkit class names, or class folders with '_' -> ' ').
The source gives no type names; ``hrn/trees/cars_names.csv`` names the nine types by the body-type word that Stanford
Cars puts at the end of its class names ("Ford F-150 Regular Cab 2012", "BMW X3 SUV 2012"): type_1 ... type_9 are
Cab (pickups), Convertible, Coupe, Hatchback, Minivan, Sedan, SUV, Van and Wagon, in the words' alphabetical order.
Every model whose name ends (before the year) in one of these words sits under that word's type, except "Ford
E-Series Wagon Van 2012" (under Wagon); the 14 names with no such word are two-door sports models (under Coupe),
four-door performance sedans (Sedan), the Chevrolet TrailBlazer SS (SUV) and the Chevrolet HHR SS (Minivan).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hrn.data.base import DataError, DataSplits
from hrn.data.files import FileSettings, Sample, make_splits, read_pairs, shipped, shipped_names
from hrn.tree import Hierarchy

__all__ = ["cars"]

log = logging.getLogger(__name__)

LAYOUT = (
    "either torchvision's StanfordCars layout (ROOT/stanford_cars/ with devkit/cars_meta.mat, "
    "devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/) or class folders "
    "ROOT/<Class_Dir>/<file>.jpg as in the HRN authors' car_train.txt / car_test.txt "
    "(Stanford Cars from https://ai.stanford.edu/~jkrause/cars/car_dataset.html)"
)


def cars_hierarchy(model_names: dict[str, str], where: str) -> Hierarchy:
    edges = Hierarchy.from_csv(shipped("cars.csv")).edges
    absent = [m for _, m in edges if m not in model_names]
    if absent:
        raise DataError(
            f"{where}: model id(s) {', '.join(absent[:5])} have no class name; expected 196 models"
        )
    types = shipped_names("cars_names.csv")
    return Hierarchy.from_edges([(types[t], model_names[m]) for t, m in edges])


def _torchvision_layout(root: Path) -> tuple[dict[str, str], dict[str, list[tuple[Path, str]]]]:
    from torchvision.datasets import StanfordCars

    splits, names = {}, {}
    for split in ("train", "test"):
        try:
            ds = StanfordCars(str(root), split=split)
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            raise DataError(
                f"dataset.root={root}: cannot read the StanfordCars {split} split ({e}); expected {LAYOUT}"
            ) from None
        names = {str(i + 1): str(n) for i, n in enumerate(ds.classes)}
        splits[split] = [(Path(p), str(c + 1)) for p, c in ds._samples]  # noqa: SLF001 - torchvision's own list
    return names, splits


def _folder_layout(root: Path) -> tuple[dict[str, str], dict[str, list[tuple[Path, str]]]]:
    splits, names = {}, {}
    for split in ("train", "test"):
        listed = root / f"car_{split}.txt"
        lst = listed if listed.is_file() else shipped(f"cars_{split}.txt")
        rows = read_pairs(lst, LAYOUT)
        splits[split] = [(root / rel, model) for rel, model in rows]
        for rel, model in rows:
            names.setdefault(model, rel.split("/", 1)[0].replace("_", " "))
    return names, splits


def cars(root: str, **settings) -> DataSplits:
    """Stanford Cars under ``root``, in either layout; ``settings``: the loader settings
    (:class:`~hrn.data.files.FileSettings`, batch 8 unless they say otherwise)."""
    files = FileSettings.of("cars", settings, batch_size=8)
    base = Path(root).expanduser()
    if (base / "stanford_cars").is_dir():
        names, splits = _torchvision_layout(base)
    elif base.is_dir() and any(p.is_dir() for p in base.iterdir()):
        names, splits = _folder_layout(base)
    else:
        raise DataError(f"dataset.root={root}: no Stanford Cars images found; expected {LAYOUT}")
    h = cars_hierarchy(names, str(base))
    samples = {}
    for split, rows in splits.items():
        unknown = [m for _, m in rows if m not in names]
        if unknown:
            raise DataError(f"{base}: model id {unknown[0]} of the {split} list is not one of the 196 models")
        samples[split] = [Sample(path, h.index(names[m])) for path, m in rows]
    return make_splits(
        "cars",
        h,
        samples["train"],
        samples["test"],
        files,
        source=f"the Stanford Cars lists under {base}",
    )
