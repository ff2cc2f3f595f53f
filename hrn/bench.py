"""``python -m hrn.bench [--quick] [--out bench.json] [--device cpu|cuda]``: speed figures, as JSON and a table.

1. Tree loss, forward + backward at batch 64: the package's formulations (``hrn.losses.TreeLoss`` with
   ``formulation="subtree"``, ``"dense"`` and ``"auto"``, and which one auto picks on this device) against the
   authors' formulation (the dense (N+1) x N state matrix, then a Python loop over the batch for each marginal), on
   the CUB tree and on level-balanced trees of 1,000 / 10,000 / 100,000 nodes (the authors' only where their state
   matrix fits). The kernels are timed in interleaved rounds; a speed-up of auto over another kernel is the median
   of the per-round ratios, with their range.
2. Train step (forward + backward + SGD step) of HRN against a plain torchvision ResNet-50 classifier on the same
   batch: the median ratio over paired runs, and images/s of each.
3. Data pipeline: images/s decoded and transformed (the paper's training transform) by one worker.

Every figure comes with the machine (CPU model and cores, or GPU name) and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.callbacks import Callback
from PIL import Image

from hrn.data.augment import normalize, reference_train_transform
from hrn.data.base import DataError
from hrn.data.files import ImageFiles, shipped
from hrn.hierarchy import Hierarchy
from hrn.io import write_json
from hrn.losses import CompositeLoss, TreeLoss
from hrn.model import HRN

__all__ = ["AuthorsTreeLoss", "machine", "main"]


class AuthorsTreeLoss:
    """The authors' formulation, re-implemented op for op for comparison (their ``tree_loss.py``): scores of all
    N + 1 states by one product with the dense (N+1) x N state matrix and ``exp`` (no log-space stabilisation),
    then, sample by sample in Python, the rows of the states containing the label (``where`` on a state-matrix
    column), their joint summed and ``-log(marginal / Z)`` written into a float64 loss vector, whose mean is
    the loss."""

    def __init__(self, h: Hierarchy, device: torch.device) -> None:
        self.states = torch.cat([torch.zeros(1, h.num_nodes), h.ancestors.float()]).to(device)  # (N+1, N)

    def __call__(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        joint = torch.exp(torch.mm(self.states, scores.T))  # (N+1, B)
        z = joint.sum(0)
        losses = torch.zeros(scores.shape[0], dtype=torch.float64, device=scores.device)
        for i in range(len(targets)):
            rows = torch.where(self.states[:, targets[i]] > 0)[0]
            losses[i] = -torch.log(torch.index_select(joint[:, i], 0, rows).sum() / z[i])
        return losses.mean()


def machine(device: torch.device) -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": torch.get_num_threads(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs, after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def balanced_tree(num_nodes: int, roots: int = 10, middle: int | None = None) -> Hierarchy:
    """A three-level tree of about ``num_nodes`` nodes: roots -> middle -> leaves, children spread evenly."""
    middle = middle or max(roots, int(round(num_nodes**0.5)))
    leaves = num_nodes - roots - middle
    edges = [(f"r{i % roots}", f"m{i}") for i in range(middle)]
    edges += [(f"m{i % middle}", f"l{i}") for i in range(leaves)]
    return Hierarchy.from_edges(edges)


def _interleaved(
    fns: dict[str, Callable[[], None]], rounds: int, device: torch.device
) -> list[dict[str, float]]:
    """Seconds per call of each ``fns[k]``, measured in ``rounds`` rounds that each time every function once.

    Why interleaved: on a shared machine the speed drifts by tens of percent within a minute, so kernels timed
    one after the other are compared across different conditions; inside a round they share them. Each timing
    repeats its call enough times to last about 5 ms (sub-millisecond timings are mostly clock noise), and the
    order flips every round so neither kernel always runs first.
    """
    inner = {}
    for name, fn in fns.items():  # warm-up, and how many calls make ~5 ms
        fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        inner[name] = max(1, round(0.005 / max(time.perf_counter() - start, 1e-6)))
    out = []
    for r in range(rounds):
        row = {}
        for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(inner[name]):
                fns[name]()
            _sync(device)
            row[name] = (time.perf_counter() - start) / inner[name]
        out.append(row)
    return out


FORMULATIONS = ("subtree", "dense", "auto")  # the package's own, all through hrn.losses.TreeLoss


def bench_tree_loss(quick: bool, device: torch.device, batch: int = 64) -> list[dict]:
    sizes = [
        ("cub", Hierarchy.from_csv(shipped("cub.csv"))),
        ("1k", balanced_tree(1_000)),
        ("10k", balanced_tree(10_000)),
    ]
    if not quick:
        sizes.append(("100k", balanced_tree(100_000)))
    rows = []
    for name, h in sizes:
        n = h.num_nodes
        g = torch.Generator().manual_seed(0)
        scores = torch.rand(batch, n, generator=g).to(device).requires_grad_()  # sigmoid-like, as the paper
        targets = torch.randint(0, n, (batch,), generator=g).to(device)
        kernels = {f: TreeLoss(h, formulation=f).to(device) for f in FORMULATIONS}
        # the authors' (N+1) x N state matrix in fp32: 576 MB at 12,000 nodes; their Python loop is slow on a CPU
        if n <= (1_000 if quick else 12_000):
            kernels["authors"] = AuthorsTreeLoss(h, device)

        def step(kernel, scores=scores, targets=targets):
            scores.grad = None
            kernel(scores, targets).backward()

        fns = {kname: (lambda k=kernel: step(k)) for kname, kernel in kernels.items()}
        rounds = _interleaved(fns, 2 if quick else 15, device)
        row = {
            "tree": name,
            "num_nodes": n,
            "levels": h.level_sizes,
            "batch": batch,
            "rounds": len(rounds),
            "auto_picks": kernels["auto"].formulation_for(device),
        }
        for kname in kernels:
            row[f"{kname}_s"] = statistics.median(r[kname] for r in rounds)
        for other in kernels.keys() - {"auto"}:
            # the median of the per-round ratios: both kernels of a ratio ran under the same conditions
            ratios = [r[other] / r["auto"] for r in rounds]
            row[f"auto_vs_{other}"] = statistics.median(ratios)
            row[f"auto_vs_{other}_range"] = [min(ratios), max(ratios)]
        rows.append(row)
    return rows


def bench_train_step(quick: bool, device: torch.device) -> dict:
    """Paired train steps of HRN (CUB tree, ResNet-50) and a plain ResNet-50 classifier on the same batch."""
    h = Hierarchy.from_csv(shipped("cub.csv"))
    size, batch, pairs = (112, 4, 3) if quick else (224, 8, 5)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = (h.offsets[-2] + torch.randint(0, h.level_sizes[-1], (batch,), generator=g)).to(device)
    hrn_net = HRN(h, trunk="resnet50").to(device).train()
    hrn_loss = CompositeLoss(h).to(device)
    plain = torchvision.models.resnet50(num_classes=h.level_sizes[-1]).to(device).train()
    opt_hrn = torch.optim.SGD(hrn_net.parameters(), lr=1e-3, momentum=0.9)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)

    def hrn_step() -> None:
        opt_hrn.zero_grad(set_to_none=True)
        hrn_loss(hrn_net(images), targets).total.backward()
        opt_hrn.step()

    def plain_step() -> None:
        opt_plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain(images), targets - h.offsets[-2]).backward()
        opt_plain.step()

    rounds = _interleaved({"hrn": hrn_step, "resnet50": plain_step}, pairs, device)
    hrn_times, plain_times = [r["hrn"] for r in rounds], [r["resnet50"] for r in rounds]
    ratios = [r["hrn"] / r["resnet50"] for r in rounds]
    return {
        "input": size,
        "batch": batch,
        "pairs": pairs,
        "hrn_s": statistics.median(hrn_times),
        "resnet50_s": statistics.median(plain_times),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "hrn_images_per_s": batch / statistics.median(hrn_times),
        "resnet50_images_per_s": batch / statistics.median(plain_times),
    }


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


def _rate(loader, epochs: int) -> float:
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

    count = 48 if quick else 480
    workers = workers if workers is not None else (2 if quick else min(8, max(1, (os.cpu_count() or 2) - 1)))
    epochs = 1 if quick else 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(Path(tmp) / "folder", count, 8, classes=8)
        for w in sorted({0, workers}):
            for cache in (False, True):
                data = folder(
                    str(root), batch_size=32, num_workers=w, resize=550, crop=448, cache=cache,
                    cache_dir=str(Path(tmp) / "cache"), val_fraction=0,
                )  # fmt: skip
                start = time.perf_counter()
                data.train.prepare()  # the cache's one-off build, timed apart
                row = {"path": "cache" if cache else "pil", "workers": w}
                row["images_per_s"] = _rate(data.loader("train"), epochs)
                if cache:
                    row["build_s"] = time.perf_counter() - start
                rows.append(row)
            previous = DataLoader(
                _PerImageFloat(data.train), batch_size=32, num_workers=w, persistent_workers=w > 0,
                sampler=EpochShuffleSampler(len(data.train)),
            )  # fmt: skip
            rows.append({"path": "pil_float", "workers": w, "images_per_s": _rate(previous, epochs)})
        images = next(iter(data.loader("train"))).images.to(device)
        seconds = statistics.median(
            r["t"] for r in _interleaved({"t": lambda: normalize(images)}, 3 if quick else 10, device)
        )
    by = {(r["path"], r["workers"]): r["images_per_s"] for r in rows}
    return {
        "images": count,
        "source": "500x375 JPEG",
        "sizes": "Resize 550 -> RandomCrop 448 pad 8 -> flip -> Normalize, batch 32",
        "loaders": rows,
        "cache_speedup": {str(w): by[("cache", w)] / by[("pil", w)] for w in sorted({0, workers})},
        "transform_device": str(device),
        "transform_images_per_s": len(images) / seconds,
    }


def bench_small_images(quick: bool) -> dict:
    """Images/s of the training loader on Fashion-MNIST's real files: the built-in dataset (uint8 images in
    memory) against the same images as PNG files in the ``folder`` format (decoded every epoch, and cached), at
    the dataset recipe's sizes (28 -> 32 px, batch 128, no workers). Needs the files (the Debian package
    ``dataset-fashion-mnist``); without them the section says so."""
    from hrn.data.base import EpochShuffleSampler
    from hrn.data.fashion_mnist import CLASSES, DEBIAN_ROOT, fashion_mnist
    from hrn.data.folder import folder

    per_class = 20 if quick else 200
    sizes = dict(batch_size=128, num_workers=0, resize=32, crop=32, padding=2, val_fraction=0)
    try:
        memory = fashion_mnist(DEBIAN_ROOT, train_per_class=per_class, test_per_class=1, **sizes)
    except DataError as e:
        return {"skipped": str(e)}
    epochs = 2 if quick else 3
    rows = [{"format": "fashion_mnist (in memory)", "images_per_s": _rate(memory.loader("train"), epochs)}]
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
        lines.append(f"img/00000.png,{CLASSES[0]},test")
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
        for cache in (False, True):
            files = folder(str(root), cache=cache, cache_dir=str(root / "cache"), **sizes)
            files.train.prepare()
            rows.append(
                {
                    "format": "folder, PNG " + ("cached" if cache else "decoded every epoch"),
                    "images_per_s": _rate(files.loader("train"), epochs),
                }
            )
        previous = torch.utils.data.DataLoader(
            _PerImageFloat(files.train), batch_size=128, sampler=EpochShuffleSampler(len(files.train))
        )
        rows.append({"format": "folder, PNG, release 0.1 pipeline", "images_per_s": _rate(previous, epochs)})
    return {
        "images": len(memory.train),
        "sizes": "28 -> 32 px, crop 32 pad 2, batch 128, 0 workers",
        "loaders": rows,
        "memory_vs_png": rows[0]["images_per_s"] / rows[1]["images_per_s"],
        "memory_vs_release_0_1": rows[0]["images_per_s"] / rows[3]["images_per_s"],
    }


class EpochTimer(Callback):
    """Records the wall time of every epoch, training and validation together (Lightning callback hooks, used by
    ``--e2e`` through ``callbacks``). Seconds go to ``self.seconds`` and, one JSON line each, to ``out``."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        _sync(module.device)
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking or not hasattr(self, "_start"):
            return
        _sync(module.device)
        self.seconds.append(time.perf_counter() - self._start)
        with open(self.out, "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "seconds": self.seconds[-1]}) + "\n")


def _step_rates(module, batch, device: torch.device, precision: str, repeats: int) -> tuple[float, float]:
    """Images/s of the training step alone (forward, both losses, backward, SGD step) and of the evaluation
    step (forward and tree marginals), on one batch kept on ``device``: what the model allows."""
    module = module.to(device)
    images = normalize(batch.images.to(device))
    targets = batch.targets.to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = module.loss(module._forward(images), targets).total
        loss.backward()
        optimizer.step()

    def eval_step() -> None:
        with torch.no_grad(), torch.autocast(**autocast):
            out = module._forward(images)
            module.tree.node_probabilities(out, module.tree_scores)

    module.train()
    train_s = statistics.median(r["train"] for r in _interleaved({"train": train_step}, repeats, device))
    module.eval()
    eval_s = statistics.median(r["eval"] for r in _interleaved({"eval": eval_step}, repeats, device))
    return images.shape[0] / train_s, images.shape[0] / eval_s


def bench_e2e(
    device: torch.device,
    *,
    train: int,
    test: int,
    resize: int,
    crop: int,
    batch: int,
    trunk: str,
    workers: int,
    precision: str,
    channels_last: bool,
    compile: bool,
    epochs: int = 3,
) -> dict:
    """The whole ``hrn.train`` epoch (loader + train steps + validation on the test split, as the paper's configs
    do) against what the step alone allows: ``allowed_s = train / train rate + test / eval rate``; the figure
    to report is ``ratio = allowed_s / epoch_s`` (1 = the loader costs nothing)."""
    from hydra import compose, initialize_config_dir

    from hrn.app import CONF_DIR, build_data, build_module
    from hrn.train import train as run_train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        root = write_image_folder(tmp / "folder", train, test, classes=min(200, max(10, train // 30)))
        generate_s = time.perf_counter() - start
        overrides = [
            f"run_dir={tmp / 'run'}",
            "dataset=folder",
            f"dataset.root={root}",
            f"dataset.resize={resize}",
            f"dataset.crop={crop}",
            f"dataset.batch_size={batch}",
            f"dataset.num_workers={workers}",
            f"dataset.cache_dir={tmp / 'cache'}",
            "dataset.val_fraction=0",  # validate on the test split, as the paper's configs
            f"model.trunk={trunk}",
            "model.pretrained=false",
            f"model.channels_last={str(channels_last).lower()}",
            f"model.compile={str(compile).lower()}",
            f"trainer.precision={precision}",
            f"trainer.max_epochs={epochs}",
            "trainer.accelerator=" + ("gpu" if device.type == "cuda" else "cpu"),
            "trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
            "callbacks.model_checkpoint.save_last=false",
            "logger=csv",
            f"+callbacks.epoch_timer._target_={__name__}.EpochTimer",
            f"+callbacks.epoch_timer.out={tmp / 'epochs.jsonl'}",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        data = build_data(cfg)
        start = time.perf_counter()
        data.train.prepare()
        data.test.prepare()
        cache_s = time.perf_counter() - start
        batch0 = next(iter(data.loader("train")))
        train_rate, eval_rate = _step_rates(build_module(cfg, data), batch0, device, precision, 5)
        run_train(cfg)
        epoch_s = [json.loads(line)["seconds"] for line in (tmp / "epochs.jsonl").read_text().splitlines()]
    allowed = train / train_rate + test / eval_rate
    steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    return {
        "setting": {
            "train": train,
            "test": test,
            "resize": resize,
            "crop": crop,
            "batch": batch,
            "trunk": trunk,
            "workers": workers,
            "precision": precision,
            "channels_last": channels_last,
            "compile": compile,
        },  # fmt: skip
        "generate_s": generate_s,
        "cache_build_s": cache_s,
        "step_alone": {
            "train_images_per_s": train_rate,
            "eval_images_per_s": eval_rate,
            "allowed_epoch_s": allowed,
        },
        "epoch_s": epoch_s,
        "steady_epoch_s": steady,
        "e2e_train_images_per_s": train / (steady - test / eval_rate) if steady > test / eval_rate else None,
        "ratio": allowed / steady,
    }


def table(result: dict) -> str:
    out = [f"machine: {result['machine']}"]
    if "tree_loss" in result:
        out += [
            "",
            "tree loss, forward + backward, batch 64 (milliseconds; speed-up of auto: median of per-round ratios)",
        ]
        out += _tree_loss_rows(result["tree_loss"])
    if "train_step" in result:
        t = result["train_step"]
        out += [
            "",
            f"train step at {t['input']} px, batch {t['batch']}, {t['pairs']} paired runs: HRN {t['hrn_s']:.3f} s "
            f"({t['hrn_images_per_s']:.1f} img/s), ResNet-50 {t['resnet50_s']:.3f} s "
            f"({t['resnet50_images_per_s']:.1f} img/s), median ratio {t['ratio_median']:.2f}",
        ]
    return "\n".join(out)


def _tree_loss_rows(rows: list[dict]) -> list[str]:
    out = [
        f"{'tree':<6}{'nodes':>8}{'subtree':>9}{'dense':>9}{'auto':>9}{'authors':>9}  {'auto =':<9}"
        f"{'x subtree':>22}{'x dense':>22}{'x authors':>22}"
    ]
    for r in rows:

        def ms(kernel, r=r):
            return f"{r[kernel + '_s'] * 1e3:9.3f}" if f"{kernel}_s" in r else f"{'-':>9}"

        def speedup(other, r=r):
            if f"auto_vs_{other}" not in r:
                return f"{'-':>22}"
            low, high = r[f"auto_vs_{other}_range"]
            return f"{r[f'auto_vs_{other}']:.2f} ({low:.2f}-{high:.2f})".rjust(22)

        out.append(
            f"{r['tree']:<6}{r['num_nodes']:>8}{ms('subtree')}{ms('dense')}{ms('auto')}{ms('authors')}  "
            f"{r['auto_picks']:<9}{speedup('subtree')}{speedup('dense')}{speedup('authors')}"
        )
    return out


def data_table(d: dict) -> str:
    out = [f"training loader, {d['images']} {d['source']} ({d['sizes']}): images/s"]
    for r in d["loaders"]:
        build = f"  (cache built in {r['build_s']:.1f} s)" if "build_s" in r else ""
        out.append(f"  {r['path']:<6} {r['workers']} workers {r['images_per_s']:10.1f}{build}")
    out.append(
        "  cache / pil: " + ", ".join(f"{x:.1f}x at {w} workers" for w, x in d["cache_speedup"].items())
    )
    return "\n".join(out)


def small_table(d: dict) -> str:
    if "skipped" in d:
        return f"small images: skipped ({d['skipped']})"
    out = [f"small images, {d['images']} Fashion-MNIST training images ({d['sizes']}): images/s"]
    out += [f"  {r['format']:<36}{r['images_per_s']:10.1f}" for r in d["loaders"]]
    out.append(
        f"  in memory / PNG decoded every epoch: {d['memory_vs_png']:.1f}x; "
        f"/ release 0.1's folder pipeline: {d['memory_vs_release_0_1']:.1f}x"
    )
    return "\n".join(out)


def e2e_table(e: dict) -> str:
    s, a = e["setting"], e["step_alone"]
    return "\n".join(
        [
            f"hrn.train end to end: {s['train']} train / {s['test']} test images, {s['trunk']}, "
            f"{s['resize']} -> {s['crop']} px, batch {s['batch']}, {s['workers']} workers, {s['precision']}, "
            f"channels_last={s['channels_last']}, compile={s['compile']}",
            f"  step alone: train {a['train_images_per_s']:.1f} img/s, eval {a['eval_images_per_s']:.1f} img/s "
            f"-> an epoch could take {a['allowed_epoch_s']:.1f} s",
            "  epochs (train + validation): " + ", ".join(f"{x:.1f} s" for x in e["epoch_s"]),
            f"  e2e / step alone: {e['ratio']:.2f}  (cache built in {e['cache_build_s']:.1f} s, once)",
        ]
    )


PARTS = ("tree_loss", "train_step", "data", "small_images")
"""The parts of the full benchmark, in the order they run (``--only``)."""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hrn.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke test")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON (default: bench.json)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--e2e",
        action="store_true",
        help="only the end-to-end hrn.train epoch against the step alone: the paper's setting on a GPU "
        "(ResNet-50, 550 -> 448 px, batch 32, bf16, channels_last, 6,000 / 5,800 images), a CPU-sized one on a CPU",
    )
    parser.add_argument("--compile", action="store_true", help="--e2e with model.compile=true")
    parser.add_argument(
        "--workers", type=int, default=None, help="loader workers (default: cores - 1, at most 15)"
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"without --e2e: the parts to run, comma-separated, of {','.join(PARTS)} (default: all)",
    )
    args = parser.parse_args(argv)
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown or not only:
        parser.error(f"--only {args.only}: expected some of {','.join(PARTS)}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    result: dict = {"machine": machine(device), "quick": args.quick}
    if args.e2e:
        workers = args.workers if args.workers is not None else min(15, max(1, (os.cpu_count() or 2) - 1))
        if device.type == "cuda":
            sizes = dict(train=6000, test=5800, resize=550, crop=448, batch=32, trunk="resnet50")
            speed = dict(precision="bf16-mixed", channels_last=True)
        else:  # what a 2-core CPU gets through in minutes: the same pipeline, a small model and image
            n = 64 if args.quick else 320
            sizes = dict(train=n, test=n // 2, resize=128, crop=112, batch=16, trunk="resnet18")
            speed = dict(precision="32-true", channels_last=False)
        result["e2e"] = bench_e2e(
            device, **sizes, **speed, workers=workers, compile=args.compile, epochs=2 if args.quick else 3
        )
        report = e2e_table(result["e2e"])
    else:
        lines = []
        if "tree_loss" in only:
            result["tree_loss"] = bench_tree_loss(args.quick, device)
        if "train_step" in only:
            result["train_step"] = bench_train_step(args.quick, device)
        lines.append(table(result))
        if "data" in only:
            result["data"] = bench_data(args.quick, device, args.workers)
            lines.append(data_table(result["data"]))
        if "small_images" in only:
            result["small_images"] = bench_small_images(args.quick)
            lines.append(small_table(result["small_images"]))
        report = "\n".join(lines)
    write_json(args.out, result)
    print(report)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
