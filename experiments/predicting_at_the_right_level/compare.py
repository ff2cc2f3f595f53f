"""Which marginals to trust for "predict what you know" (issue 26, item 4): on trained checkpoints, compare the
node probabilities from

- ``tree``: the tree marginals of the calibrated tree scores (``hrn.calibrate``'s temperatures, fitted here on the
  validation split);
- ``leaf``: the leaf softmax (its calibrated temperature) summed up the tree, consistent by construction;
- ``mix``: their average, node by node (a mixture of two tree-consistent distributions is one too).

Per source, on the test split: the ECE of each level's marginals (15 bins, top-label), the full-path accuracy of
the top-down path, and the area under the hP-vs-share-at-leaf curve (thresholds 0 to 0.99: hP at matched
coverage, the higher the better).

    python experiments/predicting_at_the_right_level/compare.py RUN_DIR [RUN_DIR ...] [--out results.json]

Each RUN_DIR is an ``hrn.train`` run folder (its ``checkpoints/best-*.ckpt``). Prints a mean ± std table over the
runs and writes the per-run figures as JSON, and hP against the share at the leaf as a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from matplotlib.figure import Figure

from hrn import load_checkpoint
from hrn.calibration import collect_outputs, fit_temperatures
from hrn.cli.build import checkpoint_data
from hrn.cli.config import CONF_DIR
from hrn.metrics.hierarchical import hierarchical_prf, level_confidence, level_ece, true_prefix
from hrn.nets.output import HRNOutput
from hrn.tree import TreeProbabilities

SOURCES = ("tree", "leaf", "mix")
THRESHOLDS = [i / 100 for i in range(100)]


def marginals_of(source: str, outputs, h, calibration: dict) -> torch.Tensor:
    probabilities = TreeProbabilities.calibrated(h, calibration)
    levels = list(outputs.scores.split(h.level_sizes, 1))
    output = HRNOutput(level_probs=levels, level_logits=levels, leaf_logits=outputs.leaf_logits)
    tree = probabilities.node_probabilities(output, "sigmoid")
    leaf = probabilities.node_probabilities(output, "leaf")
    return {"tree": tree, "leaf": leaf, "mix": (tree + leaf) / 2}[source]


def score(marginals: torch.Tensor, targets: torch.Tensor, h) -> dict:
    probabilities = TreeProbabilities(h)
    truth = h.ancestor_at_level[:, targets].T
    known = truth >= 0
    confidence, classes = level_confidence(marginals, h.level_sizes)
    ece = [float(e) for e in level_ece(confidence, (classes == truth) & known, known)]
    path = probabilities.top_down_path(marginals)
    offsets = torch.tensor(h.offsets)
    match = true_prefix(path, truth, known, offsets)
    full_path = float((match == h.num_levels).float().mean())
    curve = []
    for tau in THRESHOLDS:
        _, depth = probabilities.confident_node(marginals, tau, path)
        hp, hr, _ = hierarchical_prf(depth, match, known.sum(1))
        curve.append((float((depth == h.num_levels).float().mean()), float(hp), float(hr)))
    points = sorted({(x, p) for x, p, _ in curve if p == p})  # (share at leaf, hP); NaN hP: nothing predicted
    area = sum((x1 - x0) * (p0 + p1) / 2 for (x0, p0), (x1, p1) in zip(points, points[1:], strict=False))
    span = points[-1][0] - points[0][0] if len(points) > 1 else 0.0
    return {"ece": ece, "full_path_acc": full_path, "hp_auc": area / span if span else float("nan"),
            "coverage_span": [points[0][0], points[-1][0]], "curve": curve}  # fmt: skip


def run(folder: Path) -> dict:
    ckpt = next((folder / "checkpoints").glob("best-*.ckpt"))
    model = load_checkpoint(ckpt)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("calibrate", overrides=[f"ckpt_path={ckpt}"])
    data = checkpoint_data(cfg, model)
    device = torch.device("cpu")
    val = collect_outputs(model.net, data.loader("val"), "sigmoid", device)
    test = collect_outputs(model.net, data.loader("test"), "sigmoid", device)
    calibration = fit_temperatures(val, model.hierarchy, "sigmoid")
    result = {"run": str(folder), "calibration": calibration}
    for source in SOURCES:
        result[source] = score(
            marginals_of(source, test, model.hierarchy, calibration), test.targets, model.hierarchy
        )
        result[source + "_uncalibrated"] = score(marginals_of(source, test, model.hierarchy, None), test.targets,
                                                 model.hierarchy)  # fmt: skip
    return result


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: list[dict]) -> str:
    levels = len(results[0]["tree"]["ece"])
    head = ["source", *[f"ECE l{i + 1}" for i in range(levels)], "full-path acc", "hP AUC (vs share at leaf)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for source in [s + suffix for s in SOURCES for suffix in ("", "_uncalibrated")]:
        cells = [mean_std([r[source]["ece"][i] for r in results]) for i in range(levels)]
        cells += [
            mean_std([r[source]["full_path_acc"] for r in results]),
            mean_std([r[source]["hp_auc"] for r in results]),
        ]
        name = source.replace("_uncalibrated", " (not calibrated)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], out: Path) -> None:
    fig = Figure(figsize=(5, 4), dpi=120)
    ax = fig.subplots()
    for source, colour in zip(SOURCES, ("C0", "C1", "C2"), strict=True):
        for i, r in enumerate(results):
            xs = [x for x, p, _ in r[source]["curve"] if p == p]
            ps = [p for _, p, _ in r[source]["curve"] if p == p]
            ax.plot(xs, ps, color=colour, alpha=0.7, label=source if i == 0 else None)
    ax.set_xlabel("share of test images answered at the leaf")
    ax.set_ylabel("hierarchical precision")
    ax.set_title("hP against coverage, thresholds 0 to 0.99")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    results = [run(folder) for folder in args.runs]
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(table(results))


if __name__ == "__main__":
    main()
