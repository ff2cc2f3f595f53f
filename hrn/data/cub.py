"""CUB-200-2011 with the HRN tree: 13 orders -> 38 families -> 200 species (Wah et al., 2011).

Layout expected under ``root`` (as distributed)::

    CUB_200_2011/images/<NNN.Class_Name>/<file>.jpg
    CUB_200_2011/images.txt              <image id> <path under images/>
    CUB_200_2011/image_class_labels.txt  <image id> <class id>
    CUB_200_2011/train_test_split.txt    <image id> <1 = train, 0 = test>
    CUB_200_2011/classes.txt             <class id> <NNN.Class_Name>

The official split (5,994 / 5,794). The tree ships with the package (``hrn/trees/cub.csv``, from the HRN authors'
``hrn_species_family_order.csv``, Apache-2.0, in their ids); species are named by ``classes.txt``
("001.Black_footed_Albatross" -> "Black footed Albatross"), orders and families by their taxonomic names
(``hrn/trees/cub_names.csv``: "order_12" -> "Procellariiformes", "family_35" -> "Diomedeidae"). The source gives
only ids; the names were established from the species each id holds. They follow a post-2017 checklist (New World
sparrows as Passerellidae, the chat as Icteriidae, cormorants under Suliformes), and the authors' ids turn out to be
the names' alphabetical order: orders entirely, families within their order except the Suliformes pair.

One node is the authors' oddity, kept because the paper trains on this tree: family_8 holds only the Red-legged
Kittiwake, a gull (Laridae, Charadriiformes), yet sits under the kingfishers' order (Coraciiformes). It is named
"Laridae (kittiwake)", distinct from the gulls' and terns' "Laridae" (family_5), since a node name is unique.

Training images are listed in the authors' order (``hrn/trees/cub_train_order.txt``), which ``relabel.order=file``
follows.
"""

from __future__ import annotations

from pathlib import Path

from hrn.data.base import DataError, DataSplits
from hrn.data.files import (
    FileSettings,
    Sample,
    make_splits,
    order_by_list,
    read_pairs,
    shipped,
    shipped_names,
)
from hrn.tree import Hierarchy

__all__ = ["cub"]

LAYOUT = (
    "ROOT/CUB_200_2011/ with images/, images.txt, image_class_labels.txt, train_test_split.txt and classes.txt "
    "as distributed (CUB-200-2011 from https://www.vision.caltech.edu/datasets/cub_200_2011/)"
)


def species_name(folder: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    return folder.split(".", 1)[-1].replace("_", " ")


def cub_hierarchy(classes_txt: Path) -> Hierarchy:
    """The shipped tree with species ids renamed by ``classes.txt``, orders and families by ``cub_names.csv``."""
    names = dict(read_pairs(classes_txt, LAYOUT))
    edges = Hierarchy.from_csv(shipped("cub.csv")).edges
    species_ids = [c for p, c in edges if p.startswith("family_")]
    absent = [i for i in species_ids if i not in names]
    if absent:
        raise DataError(
            f"{classes_txt}: class id(s) {', '.join(absent[:5])} missing; expected the 200 CUB classes"
        )
    taxa = shipped_names("cub_names.csv")
    return Hierarchy.from_edges(
        [(taxa[p], species_name(names[c]) if p.startswith("family_") else taxa[c]) for p, c in edges]
    )


def cub(root: str, **settings) -> DataSplits:
    """CUB-200-2011 under ``root`` (the folder holding ``CUB_200_2011/``); ``settings``: the loader settings
    (:class:`~hrn.data.files.FileSettings`, batch 8 unless they say otherwise)."""
    files = FileSettings.of("cub", settings, batch_size=8)
    base = Path(root).expanduser() / "CUB_200_2011"
    if not base.is_dir():
        raise DataError(f"dataset.root={root}: {base} not found; expected {LAYOUT}")
    h = cub_hierarchy(base / "classes.txt")
    folders = dict(read_pairs(base / "classes.txt", LAYOUT))
    paths = dict(read_pairs(base / "images.txt", LAYOUT))
    labels = dict(read_pairs(base / "image_class_labels.txt", LAYOUT))
    is_train = dict(read_pairs(base / "train_test_split.txt", LAYOUT))
    train, test, train_keys = [], [], []
    for image_id, rel in paths.items():
        if image_id not in labels or image_id not in is_train:
            missing = "image_class_labels.txt" if image_id not in labels else "train_test_split.txt"
            raise DataError(f"{base / missing}: no line for image id {image_id} ({rel})")
        cls = labels[image_id]
        if cls not in folders:
            raise DataError(
                f"{base / 'image_class_labels.txt'}: image {image_id} has class {cls}, not in classes.txt"
            )
        sample = Sample(base / "images" / rel, h.index(species_name(folders[cls])))
        if is_train[image_id] == "1":
            train.append(sample)
            train_keys.append(rel)
        else:
            test.append(sample)
    order = shipped("cub_train_order.txt").read_text().split()
    train = order_by_list(train, train_keys, order, "CUB")
    return make_splits(
        "cub",
        h,
        train,
        test,
        files,
        source=f"the index files under {base}",
    )
