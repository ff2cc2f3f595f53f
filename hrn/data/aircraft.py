"""FGVC-Aircraft with the HRN tree: 30 makers -> 70 families -> 100 variants (Maji et al., 2013).

Layout expected under ``root`` (as distributed)::

    fgvc-aircraft-2013b/data/images/<image id>.jpg
    fgvc-aircraft-2013b/data/images_{variant,family,manufacturer}_{trainval,test}.txt   <image id> <name>

``trainval`` trains, ``test`` tests. The tree is derived from the dataset's own variant / family / manufacturer
files and checked against the tree shipped with the package (``hrn/trees/aircraft.csv``, from the HRN authors'
``hrn_variant_family_maker.csv``, Apache-2.0): every variant must sit under the same family and maker in both.
Training images follow the authors' list order (``hrn/trees/aircraft_trainval_order.txt``).

We parse the three index files ourselves rather than through torchvision's ``FGVCAircraft``, which reads one
annotation level at a time and would take three passes with no line numbers to report.
"""

from __future__ import annotations

from pathlib import Path

from hrn.data.base import DataError, DataSplits
from hrn.data.files import FileSettings, Sample, make_splits, order_by_list, read_pairs, shipped
from hrn.tree import Hierarchy

__all__ = ["aircraft"]

LAYOUT = (
    "ROOT/fgvc-aircraft-2013b/data/ with images/ and images_{variant,family,manufacturer}_{trainval,test}.txt "
    "as distributed (FGVC-Aircraft 2013b from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/)"
)
LEVELS = ("manufacturer", "family", "variant")


def aircraft_hierarchy(names: dict[str, dict[str, str]], where: Path) -> Hierarchy:
    """The shipped tree with family and maker ids renamed by the dataset's files, after checking they agree.

    ``names[level][image id]`` is the image's name at that level.
    """
    derived: dict[str, tuple[str, str]] = {}  # variant -> (family, maker) from the dataset's files
    for image_id, variant in names["variant"].items():
        pair = (names["family"].get(image_id), names["manufacturer"].get(image_id))
        if None in pair:
            level = "family" if pair[0] is None else "manufacturer"
            raise DataError(
                f"{where}: image {image_id} has a variant but no {level} line in images_{level}_*.txt"
            )
        if derived.setdefault(variant, pair) != pair:
            raise DataError(
                f"{where}: variant {variant!r} is listed under two families/makers: "
                f"{derived[variant]} and {pair}"
            )
    shipped_tree = Hierarchy.from_csv(shipped("aircraft.csv"))
    rename: dict[str, str] = {}
    for variant in shipped_tree.levels[-1]:
        if variant not in derived:
            raise DataError(
                f"{where}: variant {variant!r} of the HRN tree has no images in images_variant_*.txt"
            )
        v = shipped_tree.index(variant)
        family_id, maker_id = (
            shipped_tree.names[shipped_tree.parent_of(v)],
            shipped_tree.names[shipped_tree.parent_of(shipped_tree.parent_of(v))],
        )
        for node_id, name in ((family_id, derived[variant][0]), (maker_id, derived[variant][1])):
            if rename.setdefault(node_id, name) != name:
                raise DataError(
                    f"{where}: the dataset's tree disagrees with the shipped HRN tree at variant {variant!r}: "
                    f"{node_id} is both {rename[node_id]!r} and {name!r}"
                )
    extra = sorted(set(derived) - set(shipped_tree.levels[-1]))
    if extra:
        raise DataError(f"{where}: variant(s) {extra[:5]} are not in the HRN tree (100 variants expected)")
    if len(set(rename.values())) != len(rename):
        raise DataError(
            f"{where}: two families or makers of the HRN tree share one name in the dataset's files"
        )
    # Some families share their variant's name ("DHC-1" is both); a node name must be unique in the tree, so the
    # coarser node gets its level in brackets ("DHC-1 (family)").
    taken = set(shipped_tree.levels[-1])
    for node_id, name in rename.items():
        if name in taken:
            rename[node_id] = f"{name} ({'family' if node_id.startswith('family_') else 'maker'})"
    for node_id, name in rename.items():  # a maker named like a family
        if node_id.startswith("maker_") and name in {n for k, n in rename.items() if k.startswith("family_")}:
            rename[node_id] = f"{name} (maker)"
    return Hierarchy.from_edges([(rename[p], rename.get(c, c)) for p, c in shipped_tree.edges])


def aircraft(root: str, **settings) -> DataSplits:
    """FGVC-Aircraft under ``root`` (the folder holding ``fgvc-aircraft-2013b/``); ``settings``: the loader settings
    (:class:`~hrn.data.files.FileSettings`, batch 8 unless they say otherwise)."""
    files = FileSettings.of("aircraft", settings, batch_size=8)
    data = Path(root).expanduser() / "fgvc-aircraft-2013b" / "data"
    if not data.is_dir():
        raise DataError(f"dataset.root={root}: {data} not found; expected {LAYOUT}")
    names = {lvl: {} for lvl in LEVELS}
    order = {}
    for split in ("trainval", "test"):
        for lvl in LEVELS:
            pairs = read_pairs(data / f"images_{lvl}_{split}.txt", LAYOUT)
            names[lvl].update(pairs)
            if lvl == "variant":
                order[split] = [k for k, _ in pairs]
    h = aircraft_hierarchy(names, data)
    samples = {
        split: [Sample(data / "images" / f"{i}.jpg", h.index(names["variant"][i])) for i in ids]
        for split, ids in order.items()
    }
    authors = shipped("aircraft_trainval_order.txt").read_text().split()
    train = order_by_list(samples["trainval"], order["trainval"], authors, "FGVC-Aircraft")
    return make_splits(
        "aircraft",
        h,
        train,
        samples["test"],
        files,
        source=f"the index files under {data}",
    )
