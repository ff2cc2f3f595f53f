"""Layer 1-2: the paper's datasets and the user's folder format, on tiny copies in their real on-disk layouts."""

import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from hrn.data.aircraft import aircraft
from hrn.data.augment import downsample, resize_image
from hrn.data.base import DataError
from hrn.data.cars import cars, cars_hierarchy
from hrn.data.cub import cub, cub_hierarchy, species_name
from hrn.data.files import read_pairs, shipped, shipped_names
from hrn.data.folder import folder
from hrn.data.inat21 import RANKS, inat21
from hrn.data.protocols import apply_protocols
from hrn.errors import HRNError
from hrn.tree import Hierarchy
from tests import fixtures

SMALL = {"resize": 20, "crop": 16, "num_workers": 0}


@pytest.fixture(scope="session")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("datasets")
    return {
        "cub": fixtures.write_cub(base / "cub"),
        "aircraft": fixtures.write_aircraft(base / "aircraft"),
        "cars": fixtures.write_cars_folders(base / "cars"),
        "cars_tv": fixtures.write_cars_torchvision(base / "cars_tv"),
        "folder": fixtures.write_folder(base / "folder"),
        "folder_nosplit": fixtures.write_folder(base / "folder_nosplit", with_split=False),
        "inat21": fixtures.write_inat21(base / "inat21"),
    }


@pytest.fixture
def copy_of(roots, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(roots[name], tmp_path / name))

    return copy


def test_cub_layout(roots):
    data = cub(str(roots["cub"]), val_fraction=0, **SMALL)
    h = data.hierarchy
    assert h.level_sizes == [13, 38, 200]
    assert "Black footed Albatross" in h.levels[2] and "Laysan Albatross" in h.levels[2]
    assert (len(data.train), len(data.test)) == (600, 200)
    assert data.val is data.test  # val_fraction=0 validates on test, as the authors did
    # species 1 (Black-footed Albatross) is in family 35 of order 12, as the authors' CSV says, under their names
    albatross = h.index("Black footed Albatross")
    assert h.names[h.parent_of(albatross)] == "Diomedeidae"
    assert h.names[h.parent_of(h.parent_of(albatross))] == "Procellariiformes"
    # training images follow the authors' list order (images.txt in the fixture is sorted differently)
    order = {p: i for i, p in enumerate(shipped("cub_train_order.txt").read_text().split())}
    ranks = [
        order[str(Path(p).relative_to(roots["cub"] / "CUB_200_2011" / "images"))] for p in data.train.paths
    ]
    assert ranks == sorted(ranks)
    image, target, index = data.train[0]  # the centre crop of the resized image
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and h.is_leaf(target) and index == 0


def test_val_fraction_holds_out_per_class(roots):
    data = cub(str(roots["cub"]), val_fraction=0.34, **SMALL)
    assert (len(data.train), len(data.val)) == (400, 200)  # round(3 * 0.34) = 1 per species
    assert sorted(data.val.targets) == sorted(range(51, 251))
    again = cub(str(roots["cub"]), val_fraction=0.34, **SMALL)
    assert again.val.paths == data.val.paths  # seeded
    assert set(data.val.paths).isdisjoint(data.train.paths)


def test_aircraft_tree_from_the_dataset_files(roots):
    data = aircraft(str(roots["aircraft"]), val_fraction=0, **SMALL)
    h = data.hierarchy
    assert h.level_sizes == [30, 70, 100]
    assert "A300B4" in h.levels[2] and "Maker 1" in h.levels[0]
    assert (len(data.train), len(data.test)) == (200, 100)
    # a family named like its variant is kept distinct from it
    assert any(name.endswith(" (family)") for name in h.levels[1])
    order = {k: i for i, k in enumerate(shipped("aircraft_trainval_order.txt").read_text().split())}
    ranks = [order[Path(p).stem] for p in data.train.paths]
    assert ranks == sorted(ranks)


def test_aircraft_disagreeing_with_the_shipped_tree_is_one_line(copy_of):
    root = copy_of("aircraft")
    fam = root / "fgvc-aircraft-2013b/data/images_family_trainval.txt"
    lines = fam.read_text().splitlines()
    image_id = lines[0].split()[0]
    lines[0] = f"{image_id} Family 2"  # moves an A300B4 image to another family than its other images
    fam.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match="listed under two families/makers|disagrees with the shipped HRN tree"
    ):
        aircraft(str(root), **SMALL)


@pytest.mark.parametrize("layout", ["cars", "cars_tv"])
def test_cars_both_layouts(roots, layout):
    data = cars(str(roots[layout]), val_fraction=0, **SMALL)
    h = data.hierarchy
    assert h.level_sizes == [9, 196]
    assert h.levels[0] == [
        "Cab",
        "Convertible",
        "Coupe",
        "Hatchback",
        "Minivan",
        "Sedan",
        "SUV",
        "Van",
        "Wagon",
    ]
    assert "AM General Hummer SUV 2000" in h.levels[1]
    assert (len(data.train), len(data.test)) == (392, 196)
    assert h.names[h.parent_of(h.index("AM General Hummer SUV 2000"))] == "SUV"  # model 1 -> type 7
    # types hold 18/26/34/13/7/50/35/6/7 models
    sizes = [sum(h.parent_of(h.index(m)) == t for m in h.levels[1]) for t in range(9)]
    assert sizes == [18, 26, 34, 13, 7, 50, 35, 6, 7]


def back_to_ids(named: Hierarchy, ids: dict[str, str]) -> Hierarchy:
    """The named tree with every name mapped back to the authors' id (``ids``: name -> id, leaves included)."""
    assert set(named.names) <= set(ids), sorted(set(named.names) - set(ids))[:5]
    return Hierarchy.from_edges([(ids[p], ids[c]) for p, c in named.edges])


def check_names_table(table: dict[str, str], id_tree: Hierarchy, leaves: set[str]) -> None:
    """The table names every coarse node of the id tree once, with no id left as a name and no name shared with
    another node: a leaf's or another coarse node's."""
    coarse = {n for level in id_tree.levels[:-1] for n in level}
    assert set(table) == coarse
    names = list(table.values())
    assert len(set(names)) == len(names)
    assert not set(names) & leaves
    assert not any(n.startswith(("order_", "family_", "type_")) for n in names)


def test_cub_names_leave_the_authors_tree_unchanged(roots):
    classes = roots["cub"] / "CUB_200_2011" / "classes.txt"
    named = cub_hierarchy(classes)
    id_tree = Hierarchy.from_csv(shipped("cub.csv"))
    table = shipped_names("cub_names.csv")
    species = {species_name(folder): cid for cid, folder in read_pairs(classes, "classes.txt")}
    check_names_table(table, id_tree, set(species))
    back = back_to_ids(named, {name: i for i, name in table.items()} | species)
    assert back == id_tree  # same edges, same node order: checkpoints' output indices keep their meaning
    assert back.levels == id_tree.levels and named.level_sizes == [13, 38, 200]


# One species of each of the 38 families, under its order: with the tree's structure checked against the authors'
# ids above, this pins every name to the right node (a line shifted in cub_names.csv fails here).
CUB_TAXA = {
    "Anseriformes": {"Anatidae": "Mallard"},
    "Apodiformes": {"Trochilidae": "Anna Hummingbird"},
    "Caprimulgiformes": {"Caprimulgidae": "Whip poor Will"},
    "Charadriiformes": {
        "Alcidae": "Horned Puffin",
        "Laridae": "Caspian Tern",
        "Stercorariidae": "Pomarine Jaeger",
    },
    # The authors' one oddity, kept: the kittiwake (a gull) is a family of its own under the kingfishers' order,
    # named apart from the gulls' "Laridae".
    "Coraciiformes": {"Alcedinidae": "Belted Kingfisher", "Laridae (kittiwake)": "Red legged Kittiwake"},
    "Cuculiformes": {"Cuculidae": "Geococcyx"},
    "Gaviiformes": {"Gaviidae": "Pacific Loon"},
    "Passeriformes": {
        "Alaudidae": "Horned Lark",
        "Bombycillidae": "Cedar Waxwing",
        "Cardinalidae": "Scarlet Tanager",
        "Certhiidae": "Brown Creeper",
        "Corvidae": "Blue Jay",
        "Fringillidae": "Evening Grosbeak",
        "Hirundinidae": "Barn Swallow",
        "Icteridae": "Bobolink",
        "Icteriidae": "Yellow breasted Chat",
        "Laniidae": "Loggerhead Shrike",
        "Mimidae": "Gray Catbird",
        "Motacillidae": "American Pipit",
        "Parulidae": "Ovenbird",
        "Passerellidae": "Dark eyed Junco",
        "Passeridae": "House Sparrow",
        "Ptilonorhynchidae": "Spotted Catbird",
        "Sittidae": "White breasted Nuthatch",
        "Sturnidae": "Cape Glossy Starling",
        "Troglodytidae": "Cactus Wren",
        "Tyrannidae": "Sayornis",
        "Vireonidae": "Red eyed Vireo",
    },
    "Pelecaniformes": {"Pelecanidae": "Brown Pelican"},
    "Piciformes": {"Picidae": "Northern Flicker"},
    "Podicipediformes": {"Podicipedidae": "Western Grebe"},
    "Procellariiformes": {"Diomedeidae": "Sooty Albatross", "Procellariidae": "Northern Fulmar"},
    "Suliformes": {"Phalacrocoracidae": "Pelagic Cormorant", "Fregatidae": "Frigatebird"},
}


def test_cub_names_follow_the_species(roots):
    h = cub_hierarchy(roots["cub"] / "CUB_200_2011" / "classes.txt")
    assert h.levels[0] == list(CUB_TAXA)  # the authors' order ids are the orders' alphabetical order
    assert h.levels[1] == [fam for families in CUB_TAXA.values() for fam in families]
    for order, families in CUB_TAXA.items():
        for fam, species in families.items():
            assert h.names[h.parent_of(h.index(species))] == fam, species
            assert h.names[h.parent_of(h.index(fam))] == order, fam


def test_cars_names_leave_the_authors_tree_unchanged():
    id_tree = Hierarchy.from_csv(shipped("cars.csv"))
    models = {model: rel.split("/")[0].replace("_", " ") for rel, model in fixtures.cars_rows("train", 1)}
    named = cars_hierarchy(models, "the shipped lists")
    table = shipped_names("cars_names.csv")
    check_names_table(table, id_tree, set(models.values()))
    back = back_to_ids(named, {name: i for i, name in table.items()} | {n: m for m, n in models.items()})
    assert back == id_tree and back.levels == id_tree.levels


def test_cars_types_are_the_body_type_words():
    """A model whose name ends in a body-type word sits under that type, with one exception in the authors' tree;
    most of each type's models carry its word."""
    models = {model: rel.split("/")[0].split("_") for rel, model in fixtures.cars_rows("train", 1)}
    named = cars_hierarchy({m: " ".join(w) for m, w in models.items()}, "the shipped lists")
    carrying = dict.fromkeys(named.levels[0], 0)
    for words in models.values():
        name, body = " ".join(words), words[-2]  # the last word is the year
        body = "Cab" if body.endswith("Cab") else body  # "Regular Cab", "SuperCab"
        kind = named.names[named.parent_of(named.index(name))]
        if body in carrying:
            assert kind == body or (name, kind) == ("Ford E-Series Wagon Van 2012", "Wagon"), name
        carrying[kind] += kind in words or (kind == "Cab" and body == "Cab")
    assert carrying == {
        "Cab": 18,
        "Convertible": 26,
        "Coupe": 26,
        "Hatchback": 13,
        "Minivan": 6,
        "Sedan": 46,
        "SUV": 34,
        "Van": 6,
        "Wagon": 7,
    }  # of 18/26/34/13/7/50/35/6/7


def test_folder_with_split_column_and_coarse_labels(roots):
    data = folder(str(roots["folder"]), **SMALL)
    h = data.hierarchy
    assert h.levels == [
        ["Animal", "Plant"],
        ["Bird", "Fish", "Tree"],
        ["Sparrow", "Crow", "Cod", "Oak", "Pine"],
    ]
    assert (len(data.train), len(data.val), len(data.test)) == (12, 5, 5)
    assert data.train.labelled_at_level(h) == [1, 1, 10]


def test_folder_without_split_column_is_a_seeded_split(roots):
    data = folder(str(roots["folder_nosplit"]), val_fraction=0.2, test_fraction=0.25, **SMALL)
    n = len(data.train) + len(data.val) + len(data.test)
    assert n == 22 and len(data.test) >= 5 and len(data.val) >= 5
    assert (
        folder(str(roots["folder_nosplit"]), val_fraction=0.2, test_fraction=0.25, **SMALL).test.paths
        == data.test.paths
    )


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("order", ["file", "random"])
def test_relabel_counts_on_cub(roots, ratio, order):
    data = cub(str(roots["cub"]), val_fraction=0, **SMALL)
    before = list(data.train.targets)
    apply_protocols(data, relabel_ratio=ratio, relabel_order=order, seed=1)
    keep = math.ceil(round(3 * (1 - ratio), 9))
    h = data.hierarchy
    assert data.train.labelled_at_level(h) == [0, 200 * (3 - keep), 200 * keep]
    assert data.info["protocol"]["relabelled"] == 200 * (3 - keep)
    if order == "file":  # the first images of each class in the authors' order keep their label
        for leaf in set(before):
            members = [i for i, t in enumerate(before) if t == leaf]
            assert [data.train.targets[i] == leaf for i in members] == [True] * keep + [False] * (3 - keep)
    assert all(h.is_leaf(t) for t in data.test.targets)


@pytest.mark.parametrize(("apply_to", "expected"), [("relabelled", 200), ("all", 600)])
def test_degrade_on_cub(roots, apply_to, expected):
    data = cub(str(roots["cub"]), val_fraction=0, **SMALL)
    apply_protocols(data, relabel_ratio=0.5, degrade_scale=0.25, degrade_apply_to=apply_to)
    assert sum(data.train.degraded) == expected and not any(data.test.degraded)
    i = data.train.degraded.index(True)
    assert data.train.scale(i) == 0.25
    # the file downsampled by 0.25 (16 px -> 4 px), then resized as every image is (20 px), served from the cache
    with Image.open(data.train.paths[i]) as im:
        expected_image = resize_image(downsample(im.convert("RGB"), 0.25), 20)
    assert torch.equal(data.train.source(i, data.train.scale(i)), expected_image)
    data.train.prepare()
    assert data.train.source.path(0.25).is_file()


# ---------------------------------------------------------------- bad input: one clear line each


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("loader", "expect"),
    [
        (cub, "CUB_200_2011 not found; expected ROOT/CUB_200_2011/ with images/"),
        (aircraft, "fgvc-aircraft-2013b/data not found; expected ROOT/fgvc-aircraft-2013b/data/"),
        (cars, "no Stanford Cars images found; expected either torchvision's StanfordCars layout"),
        (folder, "folder not found; expected tree.csv"),
    ],
)
def test_missing_root(tmp_path, loader, expect):
    with pytest.raises(DataError) as e:
        loader(str(tmp_path / "nowhere"))
    assert expect in one_line(e) and "nowhere" in str(e.value)


@pytest.mark.parametrize(
    ("name", "index_file"),
    [
        ("cub", "CUB_200_2011/train_test_split.txt"),
        ("aircraft", "fgvc-aircraft-2013b/data/images_manufacturer_test.txt"),
        ("folder", "labels.csv"),
    ],
)
def test_missing_index_file(copy_of, name, index_file):
    root = copy_of(name)
    (root / index_file).unlink()
    loader = {"cub": cub, "aircraft": aircraft, "folder": folder}[name]
    with pytest.raises(DataError) as e:
        loader(str(root), **SMALL)
    assert str(root / index_file) in one_line(e) and "expected" in str(e.value)


def test_cars_torchvision_layout_missing_annotations(copy_of):
    root = copy_of("cars_tv")
    (root / "stanford_cars/cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(DataError, match="cannot read the StanfordCars test split") as e:
        cars(str(root), **SMALL)
    one_line(e)


def test_image_listed_but_absent(copy_of):
    root = copy_of("cub")
    victim = next((root / "CUB_200_2011/images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(DataError, match="image listed in .* but absent") as e:
        cub(str(root), **SMALL)
    assert str(victim) in one_line(e)


def test_undecodable_image_error_or_skip(copy_of, caplog):
    root = copy_of("folder")
    victim = root / "img/Oak_0.jpg"
    victim.write_bytes(b"this is not a jpeg")
    with pytest.raises(
        DataError, match="cannot decode the image; replace the file or set dataset.on_bad_image=skip"
    ) as e:
        folder(str(root), **SMALL)
    assert str(victim) in one_line(e)
    data = folder(str(root), on_bad_image="skip", **SMALL)
    assert data.info["skipped_images"] == 1 and str(victim) not in data.train.paths
    assert "skipped 1 undecodable image" in caplog.text
    with pytest.raises(DataError, match="on_bad_image='ignore'"):
        folder(str(root), on_bad_image="ignore", **SMALL)


def test_label_not_in_tree_names_the_csv_line(copy_of):
    root = copy_of("folder")
    lines = (root / "labels.csv").read_text().splitlines()
    lines[3] = "img/Oak_0.jpg,Maple,train"
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels.csv:4: label 'Maple' is not a node of the tree") as e:
        folder(str(root), **SMALL)
    one_line(e)


def test_split_with_no_samples(copy_of):
    root = copy_of("folder")
    lines = [line for line in (root / "labels.csv").read_text().splitlines() if not line.endswith(",test")]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="the folder test split has no samples") as e:
        folder(str(root), **SMALL)
    one_line(e)


def test_bad_tree_in_folder_is_one_line(copy_of):
    root = copy_of("folder")
    with (root / "tree.csv").open("a") as f:
        f.write("Fish,Bird\n")
    with pytest.raises(HRNError, match="tree.csv: .*(cycle|two parents)") as e:
        folder(str(root), **SMALL)
    one_line(e)


def test_bad_split_value_and_header(copy_of):
    root = copy_of("folder")
    lines = (root / "labels.csv").read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",holdout"
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels.csv:2: split 'holdout' must be one of train, val, test"):
        folder(str(root), **SMALL)
    (root / "labels.csv").write_text("file,class\na.jpg,Oak\n")
    with pytest.raises(DataError, match="header 'path,label'"):
        folder(str(root), **SMALL)


def test_decode_failure_during_training_names_the_file(copy_of):
    data = folder(str(copy_of("folder")), cache=False, **SMALL)
    Path(data.train.paths[0]).write_bytes(b"broken after the check")
    with pytest.raises(DataError, match=f"{data.train.paths[0]}: cannot decode the image"):
        data.train[0]
    assert torch.is_tensor(data.train[1][0])


def test_decode_failure_while_caching_names_the_file(copy_of):
    data = folder(str(copy_of("folder")), **SMALL)
    Path(data.train.paths[0]).write_bytes(b"broken after the check")
    with pytest.raises(DataError, match=f"{data.train.paths[0]}: cannot decode the image") as e:
        data.loader("train")
    assert "\n" not in str(e.value)
    assert not list(data.train.source.folder.glob(".*.tmp"))  # the half-built cache is gone


def test_a_path_listed_twice_in_labels_csv_is_refused_with_both_lines(tmp_path):
    root = fixtures.write_folder(tmp_path)
    rows = (root / "labels.csv").read_text().splitlines()
    path = rows[3].split(",")[0]
    (root / "labels.csv").write_text("\n".join([*rows, f"{path},Oak,train"]) + "\n")
    with pytest.raises(DataError) as e:
        folder(str(root))
    assert str(e.value) == (
        f"{root / 'labels.csv'}:{len(rows) + 1}: {path} is listed again (first at line 4); an image has one label "
        "and one split: keep one of the two rows"
    )


def test_a_training_split_of_one_image_is_one_line(tmp_path):
    root = fixtures.write_folder(tmp_path)
    header, *rows = (root / "labels.csv").read_text().splitlines()
    train = [r for r in rows if r.endswith(",train")]
    keep = [r for r in rows if not r.endswith(",train")] + train[:1]
    (root / "labels.csv").write_text("\n".join([header, *keep]) + "\n")
    data = folder(str(root), num_workers=0)
    with pytest.raises(DataError, match=r"split has 1 image; training needs at least 2 \(BatchNorm"):
        data.loader("train")


# ---------------------------------------------------------------- iNaturalist 2021


def test_inat21_builds_the_seven_rank_tree_from_its_categories(roots):
    data = inat21(str(roots["inat21"]), val_fraction=0, **SMALL)
    h = data.hierarchy
    assert h.num_levels == len(RANKS) == 7 and h.level_sizes == [2, 2, 2, 3, 5, 5, 6]
    assert h.levels[0] == ["Animalia", "Plantae"] and "Passer domesticus" in h.levels[-1]
    assert (len(data.train), len(data.test)) == (18, 6)  # train.json trains, val.json tests
    # the genus Morus of the gannets and the one of the mulberries: one name, two nodes, each under its family
    gannets, mulberries = h.index("Morus (genus in Sulidae)"), h.index("Morus (genus in Moraceae)")
    assert h.names[h.parent_of(gannets)] == "Sulidae" and h.names[h.parent_of(mulberries)] == "Moraceae"
    leaf = h.index("Passer montanus")
    chain = [leaf]
    while h.parent_of(chain[0]) >= 0:
        chain.insert(0, h.parent_of(chain[0]))
    assert [h.names[v] for v in chain] == [
        "Animalia", "Chordata", "Aves", "Passeriformes", "Passeridae", "Passer", "Passer montanus"
    ]  # fmt: skip
    assert set(data.train.targets) == set(range(h.offsets[-2], h.offsets[-1]))  # every image at a species
    assert data.train.paths[0].startswith(str(roots["inat21"] / "train"))  # root/<file_name>


def test_inat21_keeps_the_ranks_asked_for_and_reads_train_mini(roots):
    data = inat21(
        str(roots["inat21"]), "train_mini", ["order", "family", "genus", "species"], val_fraction=0, **SMALL
    )
    h = data.hierarchy
    assert h.level_sizes == [3, 5, 5, 6] and h.levels[0] == ["Passeriformes", "Rosales", "Suliformes"]
    assert (len(data.train), len(data.test)) == (12, 6)
    coarse = inat21(str(roots["inat21"]), ranks=["kingdom", "family"], val_fraction=0, **SMALL).hierarchy
    assert coarse.level_sizes == [2, 5]  # images labelled at the finest kept rank, their family


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"ranks": ["species", "genus"]},
            "dataset.ranks=['species', 'genus']: give each rank once, coarse to fine",
        ),
        (
            {"ranks": ["order", "tribe"]},
            "dataset.ranks=['order', 'tribe']: use two or more of kingdom, phylum",
        ),
        ({"ranks": ["species"]}, "(one rank is no tree)"),
        ({"variant": "mini"}, "dataset.variant='mini': use train or train_mini"),
    ],
)
def test_inat21_bad_settings_are_one_line(roots, kwargs, message):
    with pytest.raises(DataError) as e:
        inat21(str(roots["inat21"]), **kwargs, **SMALL)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_inat21_missing_or_broken_files_are_one_line(copy_of):
    root = copy_of("inat21")
    (root / "val.json").unlink()
    with pytest.raises(DataError, match=r"val.json not found; expected ROOT/train.json"):
        inat21(str(root), **SMALL)
    (root / "val.json").write_text("{not json")
    with pytest.raises(DataError, match=r"val.json: not a readable JSON file"):
        inat21(str(root), **SMALL)
    (root / "val.json").write_text(
        '{"images": [], "annotations": [{"image_id": 7, "category_id": 0}], "categories": []}'
    )
    with pytest.raises(DataError, match=r"names an image or category that the file does not list"):
        inat21(str(root), **SMALL)
