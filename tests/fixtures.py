"""The suite's plain helpers: tiny copies of each dataset in its real on-disk layout (a few small JPEGs per class),
the tests' tiny training setting, random trees and the oracles several modules share, and :func:`run_command`, which
runs ``python -m hrn.<verb>`` in this process (no interpreter start-up, no second import of torch and Lightning)."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import os
import random
import runpy
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from hrn import Hierarchy
from hrn.data.files import shipped

SIZE = 16
ROOT = Path(__file__).resolve().parent.parent
TINY = [  # shrink the default synthetic run to seconds
    "dataset.train_per_leaf=4",
    "dataset.val_per_leaf=2",
    "dataset.test_per_leaf=3",
    "dataset.batch_size=16",
    "model.width=32",
    "model.dim=16",
    "callbacks.progress_bar.refresh_rate=0",
]
LEVEL_KEYS = {
    "test/acc_l1",
    "test/acc_l2",
    "test/acc_l3",
    "test/acc_leaf_sigmoid",
    "test/loss",
    "test/loss_tree",
    "test/loss_leaf_ce",
}


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


# iNaturalist 2021's categories for the fixture: two kingdoms, 6 species; "Morus" is a genus of plants (mulberries)
# and one of animals (gannets), the clash the names must survive
INAT_SPECIES = [
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Passeridae", "Passer", "domesticus"),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Passeridae", "Passer", "montanus"),
    ("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax"),
    ("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina"),
]


def write_inat21(root: Path, per_species: tuple[int, int, int] = (3, 2, 1)) -> Path:
    """iNaturalist 2021 as distributed: train.json, train_mini.json and val.json (COCO style, the real keys), and
    the images under root/<file_name>; ``per_species``: images a species in train, train_mini and val."""
    keys = ("kingdom", "phylum", "class", "order", "family", "genus", "specific_epithet")
    categories = []
    for i, taxa in enumerate(INAT_SPECIES):
        entry = {
            "id": i,
            "name": f"{taxa[5]} {taxa[6]}",
            "common_name": f"species {i}",
            **dict(zip(keys, taxa, strict=True)),
        }
        entry["supercategory"], entry["image_dir_name"] = taxa[0], f"{i:05d}_{'_'.join(taxa)}"
        categories.append(entry)
    n = 0
    for split, per in zip(("train", "train_mini", "val"), per_species, strict=True):
        images, annotations = [], []
        for c in categories:
            for _ in range(per):
                name = f"{split}/{c['image_dir_name']}/{n:06d}.jpg"
                jpeg(root / name, n)
                images.append({"id": n, "file_name": name, "width": 24, "height": 24})
                annotations.append({"id": n, "image_id": n, "category_id": c["id"]})
                n += 1
        doc = {"info": {"year": 2021}, "images": images, "annotations": annotations, "categories": categories}
        (root / f"{split}.json").write_text(json.dumps(doc))
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


def train_folder(root: Path, run_dir: Path, *overrides: str) -> Path:
    """One epoch of a narrow ResNet-18 HRN at 16 px on the folder dataset ``root`` (:func:`write_folder`), through
    ``hrn.train`` with ``overrides``; returns the run's ``last.ckpt``."""
    from hydra import compose, initialize_config_dir

    from hrn.cli.config import CONF_DIR
    from hrn.train import train

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"run_dir={run_dir}", "dataset=folder", f"dataset.root={root}", "dataset.resize=16",
                "dataset.crop=16", "dataset.num_workers=0", "model.trunk=resnet18", "model.pretrained=false",
                "model.width=16", "model.dim=8", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                *overrides,
            ],
        )  # fmt: skip
    train(cfg)
    return Path(run_dir) / "checkpoints" / "last.ckpt"


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


def make_cfg(run_dir: Path, *overrides: str, config: str = "train"):
    """The composed config of ``config`` (a command's config name) for the tiny setting (:data:`TINY`, train only)
    and ``overrides``, writing into ``run_dir``."""
    from hydra import compose, initialize_config_dir

    from hrn.cli.config import CONF_DIR

    tiny = TINY if config == "train" else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config, overrides=[f"run_dir={run_dir}", *tiny, *overrides])


def train_tiny(run_dir: Path, *overrides: str) -> dict[str, float]:
    """``hrn.train`` of the tests' tiny synthetic setting (:data:`TINY`) and ``overrides``, into ``run_dir``;
    returns the test metrics."""
    from hrn.train import train

    return train(make_cfg(run_dir, *overrides))


# A run that learns something in seconds: a ResNet trunk with its standard stem divides by 32, so 64 px give
# 2 x 2 maps (Grad-CAM needs more than one cell); 12 images a leaf and 4 epochs lift it well above chance.
LEARNT_SIZE = 64
LEARNT = [
    f"dataset.image_size={LEARNT_SIZE}",
    f"dataset.resize={LEARNT_SIZE}",
    f"dataset.crop={LEARNT_SIZE}",
    "model.stem=standard",
    "dataset.train_per_leaf=12",
    "dataset.val_per_leaf=6",
    "dataset.test_per_leaf=6",
    "trainer.max_epochs=4",
]


def best_checkpoint(run_dir: Path) -> Path:
    """The ``best-epochNNN.ckpt`` of a training run."""
    return next((Path(run_dir) / "checkpoints").glob("best-*.ckpt"))


@dataclass(frozen=True)
class TrainedRun:
    """A finished training run shared by several tests: read it, never write into it (copy what you change)."""

    folder: Path
    metrics: dict
    stdout: str = ""

    @property
    def best(self) -> Path:
        return best_checkpoint(self.folder)

    @property
    def last(self) -> Path:
        return self.folder / "checkpoints" / "last.ckpt"


def trained_run(folder: Path, *overrides: str) -> TrainedRun:
    """Train the tiny setting with ``overrides`` into ``folder``."""
    return TrainedRun(folder, train_tiny(folder, *overrides))


def once_per_session(base: Path, name: str, make: Callable[[Path], dict]) -> tuple[Path, dict]:
    """``make(folder)`` run once for the whole test session, even when pytest-xdist spreads the tests over several
    processes: the first to ask builds ``base/name`` under a file lock, the others wait and read what it wrote
    (``make``'s JSON result beside the folder)."""
    from filelock import FileLock

    folder, done = base / name, base / f"{name}.json"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(make(folder)))
    return folder, json.loads(done.read_text())


def random_tree(depth: int, seed: int, max_children: int = 3, roots: int | None = None) -> Hierarchy:
    """A random level-balanced tree of ``depth`` levels (every leaf at the deepest level)."""
    rng = random.Random(seed)
    level = [f"n0_{i}" for i in range(roots or rng.randint(1, 3))]
    edges = []
    for d in range(1, depth):
        nxt = []
        for parent in level:
            for _ in range(rng.randint(1, max_children)):
                child = f"n{d}_{len(nxt)}"
                nxt.append(child)
                edges.append((parent, child))
        level = nxt
    rng.shuffle(edges)  # the builder must not depend on edge order for structure
    return Hierarchy.from_edges(edges)


def dense_log_marginals(h: Hierarchy, scores: torch.Tensor) -> torch.Tensor:
    """The oracle: enumerate the N + 1 legal states explicitly (paper Eq. 3-5). (B, N) -> (B, N) log P(v).

    State 0 is the empty state; state v + 1 = {v} ∪ ancestors(v). P(v) sums P over states that contain v.
    """
    states = torch.cat(
        [torch.zeros(1, h.num_nodes, dtype=scores.dtype), h.ancestors.to(scores.dtype)]
    )  # (N+1, N)
    log_p_state = (scores @ states.T).log_softmax(dim=1)  # (B, N+1)
    contains = states.bool()  # (N+1, N): state s contains node v
    out = []
    for v in range(h.num_nodes):
        out.append(torch.logsumexp(log_p_state[:, contains[:, v]], dim=1))
    return torch.stack(out, dim=1)


def greedy_path(marginals: torch.Tensor, h: Hierarchy, node: int | None = None) -> list[int]:
    """The oracle of the top-down path, one sample at a time with a Python walk over the tree: (N,) marginals -> a
    root-to-leaf path (global indices, one per level). ``node=None``: the most probable level-1 node, then its most
    probable child, and so on. A node index: its ancestors, the node, then below it the most probable child at
    each level."""
    off = h.offsets
    path = [int(marginals[: off[1]].argmax()) if node is None else node]
    while h.parent_of(path[0]) >= 0:
        path.insert(0, h.parent_of(path[0]))
    for lvl in range(len(path), h.num_levels):
        children = (h.level_parents[lvl - 1] == path[-1] - off[lvl - 1]).nonzero().flatten() + off[lvl]
        path.append(int(children[marginals[children].argmax()]))
    return path


class CompileCounts(L.Callback):
    """A Lightning callback that records how many graphs
    torch.compile had compiled (``graphs``, the ``compiled_graphs`` fixture) at the end of each training epoch;
    added to a run through the config: ``+callbacks.compiles._target_=tests.fixtures.CompileCounts``."""

    graphs: list = []
    counts: list = []

    def on_train_epoch_end(self, trainer, module) -> None:
        CompileCounts.counts.append(len(CompileCounts.graphs))


class RecordOrder(L.Callback):
    """A Lightning callback that writes, for each training batch, ``{"epoch", "rank", "index"}`` (the dataset
    indices of its images) as one JSON line to ``<folder>/order-rank<r>.jsonl``: what each DDP process saw. Added
    through the config: ``+callbacks.order._target_=tests.fixtures.RecordOrder +callbacks.order.folder=DIR``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"epoch": trainer.current_epoch, "rank": trainer.global_rank, "index": batch.index.tolist()}
        with (self.folder / f"order-rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a command run in a process of its own: this one's, with the checkout first on the path
    (so the callbacks of this module import wherever the process starts), and ``extra``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]]), **extra}


@dataclass
class Ran:
    """What a command run by :func:`run_command` left: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def process_state(cwd: Path | None) -> Iterator[None]:
    """Put back what a command changes in the process: argv, the working folder, the environment, the logging
    configuration (Hydra configures the root logger per job, Lightning's loggers are re-wired), warning filters,
    torch's global flags and Hydra's global state."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    argv, old_cwd, environ = list(sys.argv), os.getcwd(), dict(os.environ)
    loggers = [logging.getLogger()] + [
        v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)
    ]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    flags = (
        torch.get_float32_matmul_precision(),
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
        torch.get_default_dtype(),
    )
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings():
            # runpy's note that hrn.<verb> was imported before: true of any test module that imports it, harmless
            warnings.filterwarnings(
                "ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning
            )
            yield
    finally:
        os.chdir(old_cwd)
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        for lg, level, handlers, propagate, disabled in saved:
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
        torch.set_float32_matmul_precision(flags[0])
        torch.use_deterministic_algorithms(flags[1])
        torch.set_num_threads(flags[2])
        torch.set_default_dtype(flags[3])
        GlobalHydra.instance().clear()


def run_command(verb: str, *args: str, cwd: Path | None = None) -> Ran:
    """``python -m hrn.<verb> *args`` (run from ``cwd``) in this process, as the interpreter would run it
    (:func:`runpy.run_module` as ``__main__``): its exit status and what it printed on stdout and stderr. Tests that
    need a fresh interpreter (what an import loads, an install, a process that is killed) use a subprocess."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with process_state(cwd):
        sys.argv = [f"hrn.{verb}", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module(f"hrn.{verb}", run_name="__main__", alter_sys=True)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())


class RecordWeights(L.Callback):
    """A Lightning callback that writes, when training ends, the SHA-256 of the network's parameters (in
    ``state_dict`` order, as bytes) to ``<folder>/weights-rank<r>.txt``: whether the DDP processes agree on the
    weights. Added through the config: ``+callbacks.weights._target_=tests.fixtures.RecordWeights
    +callbacks.weights.folder=DIR``."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer, module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"weights-rank{trainer.global_rank}.txt").write_text(weights_digest(module.net))


def weights_digest(net: torch.nn.Module) -> str:
    """SHA-256 of a network's parameters (not its buffers: BatchNorm statistics are each process's own under DDP
    without SyncBatchNorm), in ``named_parameters`` order."""
    import hashlib

    digest = hashlib.sha256()
    for name, p in net.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class KillAt(L.Callback):
    """A Lightning callback that SIGKILLs its own process as training batch ``step`` (0-based, counted over the
    run) starts: a crash at a known point, with no race against a timer. Added through the config:
    ``+callbacks.kill._target_=tests.fixtures.KillAt +callbacks.kill.step=N``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
