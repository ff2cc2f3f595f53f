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
from PIL import Image

from hrn.data.base import build_transforms
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


def bench_data(quick: bool) -> dict:
    """Images/s through decode + the paper's training transform, one worker (the main process)."""
    count = 8 if quick else 32
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        g = torch.Generator().manual_seed(0)
        for i in range(count):  # CUB-like JPEGs: about 500 x 375
            pixels = (torch.rand(375, 500, 3, generator=g) * 255).to(torch.uint8).numpy()
            path = Path(folder) / f"{i}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(path)
        load = ImageFiles(paths)
        transform = build_transforms(True, 550, 448, 8)

        def run() -> None:
            for i in range(count):
                transform(load(i))

        seconds = _time(run, 1 if quick else 3, torch.device("cpu"))
    return {
        "images": count,
        "source": "500x375 JPEG",
        "transform": "Resize 550 -> RandomCrop 448 pad 8 -> flip -> Normalize",
        "images_per_s_per_worker": count / seconds,
    }


def table(result: dict) -> str:
    out = [
        f"machine: {result['machine']}",
        "",
        "tree loss, forward + backward, batch 64 (milliseconds; speed-up of auto: median of per-round ratios)",
    ]
    out.append(
        f"{'tree':<6}{'nodes':>8}{'subtree':>9}{'dense':>9}{'auto':>9}{'authors':>9}  {'auto =':<9}"
        f"{'x subtree':>22}{'x dense':>22}{'x authors':>22}"
    )
    for r in result["tree_loss"]:

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
    t = result["train_step"]
    out += [
        "",
        f"train step at {t['input']} px, batch {t['batch']}, {t['pairs']} paired runs: HRN {t['hrn_s']:.3f} s "
        f"({t['hrn_images_per_s']:.1f} img/s), ResNet-50 {t['resnet50_s']:.3f} s "
        f"({t['resnet50_images_per_s']:.1f} img/s), median ratio {t['ratio_median']:.2f}",
    ]
    d = result["data"]
    out.append(
        f"data pipeline: {d['images_per_s_per_worker']:.1f} images/s per worker ({d['source']}, {d['transform']})"
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m hrn.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke test")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON (default: bench.json)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    result = {
        "machine": machine(device),
        "quick": args.quick,
        "tree_loss": bench_tree_loss(args.quick, device),
        "train_step": bench_train_step(args.quick, device),
        "data": bench_data(args.quick),
    }
    write_json(args.out, result)
    print(table(result))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
