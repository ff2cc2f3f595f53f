"""iNaturalist 2021 (Van Horn et al., CVPR 2021): 10,000 species under 7 ranks, kingdom -> ... -> species.

Layout expected under ``root`` (as distributed, the archives unpacked beside their JSON files)::

    train.json | train_mini.json      COCO style: "images" (id, file_name), "annotations" (image_id,
    val.json                          category_id), "categories" (id, name, kingdom, phylum, class, order,
    train/... | train_mini/... val/...   family, genus, specific_epithet); file_name is relative to root

``train.json`` (2.7 M images) or ``train_mini.json`` (500 000, ``dataset.variant=train_mini``) trains; ``val.json``
(100 000, the labelled evaluation set; the challenge's test set has no labels) tests. The tree is built from the
categories' own ranks; ``dataset.ranks`` keeps a subset of them, coarse to fine (e.g. ``[order, family, genus,
species]``: 4 levels). Every image is labelled at the finest kept rank.

Names of the tree: a taxon's own name ("Animalia", "Aves", "Passer"), the species its binomial (the category's
``name``, else genus + epithet). A node name is unique in the tree, so a name that two taxa share (a genus of
plants and one of animals, a family named like an order) gets its rank, then its parent, in brackets:
"Morus (genus)", "Morus (genus in Moraceae)".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hrn.data.base import DataError, DataSplits
from hrn.data.files import FileSettings, Sample, make_splits
from hrn.tree import Hierarchy

__all__ = ["RANKS", "VARIANTS", "inat21", "inat21_tree"]

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
VARIANTS = ("train", "train_mini")
LAYOUT = (
    "ROOT/train.json (or train_mini.json) and ROOT/val.json with the images under ROOT/<file_name>, as distributed "
    "(iNaturalist 2021, https://github.com/visipedia/inat_comp/tree/master/2021)"
)


def check_ranks(ranks: Sequence[str] | None) -> tuple[str, ...]:
    """``ranks`` (None: all seven) when they are some of :data:`RANKS`, coarse to fine, each once; one line
    otherwise."""
    if ranks is None:
        return RANKS
    ranks = tuple(str(r) for r in ranks)
    unknown = [r for r in ranks if r not in RANKS]
    if unknown or len(ranks) < 2:
        raise DataError(
            f"dataset.ranks={list(ranks)}: use two or more of {', '.join(RANKS)}, coarse to fine (one rank is no tree)"
        )
    if list(ranks) != sorted(set(ranks), key=RANKS.index):
        raise DataError(
            f"dataset.ranks={list(ranks)}: give each rank once, coarse to fine, e.g. [order, family, genus, species]"
        )
    return ranks


def _read(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"dataset.root={path.parent}: {path.name} not found; expected {LAYOUT}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise DataError(f"{path}: no {key!r} list; expected iNaturalist 2021's COCO-style JSON")
    return doc


def _taxa(category: dict, ranks: tuple[str, ...], where: Path) -> tuple[str, ...]:
    """The category's names at ``ranks``."""
    names = []
    for rank in ranks:
        if rank == "species":
            value = (
                category.get("name") or f"{category.get('genus', '')} {category.get('specific_epithet', '')}"
            )
        else:
            value = category.get(rank)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: category {category.get('id')!r} has no {rank!r}")
        names.append(value.strip())
    return tuple(names)


def inat21_tree(paths: Sequence[tuple[str, ...]], ranks: tuple[str, ...]) -> tuple[Hierarchy, dict]:
    """The tree of the taxon paths (one per category, coarse to fine along ``ranks``) and each path's leaf name.

    A node is a path prefix; its name is its last taxon's, made unique as the module docstring says."""
    prefixes = sorted({p[: i + 1] for p in paths for i in range(len(ranks))}, key=lambda q: (len(q), q))
    by_name: dict[str, list[tuple[str, ...]]] = {}
    for q in prefixes:
        by_name.setdefault(q[-1], []).append(q)
    name: dict[tuple[str, ...], str] = {}
    for taxon, nodes in by_name.items():
        for q in nodes:
            rank = ranks[len(q) - 1]
            if len(nodes) == 1:
                name[q] = taxon
            elif sum(len(o) == len(q) for o in nodes) == 1:
                name[q] = f"{taxon} ({rank})"
            else:  # the same name twice at one rank, so under different parents (level 1 has one of each)
                name[q] = f"{taxon} ({rank} in {q[-2]})"
    edges = [(name[q[:-1]], name[q]) for q in prefixes if len(q) > 1]
    return Hierarchy.from_edges(edges), {p: name[p] for p in paths}


def _samples(doc: dict, root: Path, where: Path, leaf: dict) -> list[Sample]:
    """The annotations of ``doc`` as samples; ``leaf``: each category id's node index."""
    files = {}
    for image in doc["images"]:
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(f"{where}: an image entry without 'id' and 'file_name': {str(image)[:80]}")
        files[image["id"]] = image["file_name"]
    samples = []
    for note in doc["annotations"]:
        try:
            file_name, node = files[note["image_id"]], leaf[note["category_id"]]
        except (KeyError, TypeError):
            raise DataError(
                f"{where}: annotation {str(note)[:80]} names an image or category that the file does not list"
            ) from None
        samples.append(Sample(root / file_name, node))
    return samples


def inat21(root: str, variant: str = "train", ranks: Sequence[str] | None = None, **settings) -> DataSplits:
    """iNaturalist 2021 under ``root``: ``variant`` (``train`` or ``train_mini``) trains, ``val.json`` tests, the
    tree at ``ranks`` (default all seven); ``settings``: the loader settings
    (:class:`~hrn.data.files.FileSettings`)."""
    if variant not in VARIANTS:
        raise DataError(f"dataset.variant={variant!r}: use train or train_mini")
    ranks = check_ranks(ranks)
    files = FileSettings.of("inat21", settings, batch_size=32)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"dataset.root={root}: not a folder; expected {LAYOUT}")
    docs = {
        split: (base / f"{file}.json", _read(base / f"{file}.json"))
        for split, file in (("train", variant), ("test", "val"))
    }
    paths: dict[object, tuple[str, ...]] = {}
    for where, doc in docs.values():
        for category in doc["categories"]:
            if not isinstance(category, dict) or "id" not in category:
                raise DataError(f"{where}: a category without an 'id': {str(category)[:80]}")
            path = _taxa(category, ranks, where)
            if paths.setdefault(category["id"], path) != path:
                raise DataError(
                    f"{where}: category {category['id']} has other ranks than in {docs['train'][0].name}"
                )
    h, leaf_names = inat21_tree(list(paths.values()), ranks)
    leaf = {cid: h.index(leaf_names[p]) for cid, p in paths.items()}  # once a category, not once an image
    train, test = (_samples(doc, base, where, leaf) for where, doc in docs.values())
    name = "inat21" if variant == "train" else "inat21_mini"  # also the image caches' names
    return make_splits(name, h, train, test, files, source=f"{docs['train'][0]} and {docs['test'][0]}")
