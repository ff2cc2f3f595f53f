"""``python -m hrn.report <multirun dir> [<more dirs> ...] [--out DIR]``: one table from a Hydra sweep.

Finds every run directory (one with ``.hydra/overrides.yaml``, at any depth, or the given directory itself) and
groups the runs into rows by *method*: the run's overrides less those named in :data:`NOT_METHOD`, sorted and
joined by spaces (``loss=leaf_ce model.gsb=false``; ``hrn (default)`` when none is left). Overrides that every run
has (``experiment=...``) leave the row names when there are two methods or more, and results.md names them once.
The relabel ratio and the seed come from the run's ``.hydra/config.yaml``, so defaults count too. A run is ``ok``
when it wrote ``metrics.json`` and ``failed`` otherwise (it crashed or is still running); failed runs are listed,
never averaged.

Writes, atomically, into the first directory (or ``--out DIR``):

- ``results.csv``: one row per run: ``run_dir, method, relabel_ratio, seed, status`` and every metric;
- ``results.md``: mean ± sample standard deviation (n - 1) over the finished seeds of ``test/acc_l{l}`` per method
  (rows) and relabel ratio × level (columns), the same for :data:`OTHER_METRICS`, then the failed runs;
- ``accuracy_vs_relabel_ratio.png``: a panel per level, accuracy against relabel ratio, a line per method.

Needs neither torch nor Lightning (``python -m`` still imports the ``hrn`` package, which does).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hrn.errors import HRNError
from hrn.io import atomic_write_bytes

__all__ = [
    "NOT_METHOD",
    "OTHER_METRICS",
    "DEFAULT_METHOD",
    "Run",
    "ReportError",
    "find_runs",
    "load_run",
    "method_of",
    "summary",
    "levels",
    "markdown",
    "write_report",
    "main",
]

NOT_METHOD = ("relabel_ratio", "seed", "run_dir", "hydra", "trainer", "callbacks", "logger")
"""Overrides that do not define the method: these keys and everything under them (``hydra.sweep.dir``,
``hydra/launcher``, ``trainer.max_epochs``, ...), with or without a leading ``+``, ``++`` or ``~``. The relabel
ratio and the seed are the table's columns and its repeats; the rest say where and how long a run ran."""

OTHER_METRICS = ("ap_micro", "full_path_acc", "mistake_severity")
"""The metrics (``test/<name>``) of the second table, each shown when some finished run has it."""

DEFAULT_METHOD = "hrn (default)"
PREFIX = "test/"
FILES = ("results.csv", "results.md", "accuracy_vs_relabel_ratio.png")
_ACC = re.compile(rf"^{re.escape(PREFIX)}acc_l(\d+)$")


class ReportError(HRNError):
    """A path that does not exist, holds no runs, or a run whose Hydra files cannot be read."""


@dataclass
class Run:
    path: Path
    shown: str  # the path as the user would type it: the given directory joined with the part below it
    method: str
    relabel_ratio: float | None
    seed: int | None
    metrics: dict[str, float] | None  # None: no (readable) metrics.json
    reason: str = ""  # why a run counts as failed
    overrides: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "ok" if self.metrics is not None else "failed"


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").strip()


def _normalise(override: str) -> str:
    key, sep, value = override.partition("=")
    if value in ("True", "False"):  # overrides.yaml may hold `true` or `True` for the same setting
        value = value.lower()
    return f"{key}{sep}{value}"


def _method_parts(overrides: Iterable[str]) -> list[str]:
    """The overrides that define the method: all less :data:`NOT_METHOD`, normalised and sorted."""
    kept = []
    for override in overrides:
        key = _override_key(str(override))
        if any(key == name or key.startswith((f"{name}.", f"{name}/")) for name in NOT_METHOD):
            continue
        kept.append(_normalise(str(override).strip()))
    return sorted(kept)


def method_of(overrides: Iterable[str], shared: Iterable[str] = ()) -> str:
    """The row a run belongs to: its overrides less :data:`NOT_METHOD` and less ``shared`` (the settings every
    run of the report has), sorted, space-joined."""
    shared = set(shared)
    left = [part for part in _method_parts(overrides) if part not in shared]
    return " ".join(left) or DEFAULT_METHOD


def shared_settings(runs: Sequence[Run]) -> list[str]:
    """The method overrides every run has (``experiment=fashion_mnist_study``), when the runs hold two methods or
    more: they tell no row from another, so the rows leave them out and the report names them once. With one
    method they stay in its name, which would otherwise read as the default."""
    parts = [set(_method_parts(r.overrides)) for r in runs]
    if len({frozenset(p) for p in parts}) < 2:
        return []
    return sorted(set.intersection(*parts))


def _read_yaml(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        raise ReportError(f"{path}: not found; is this a complete Hydra run directory?") from None
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(
            f"{path}: cannot read it ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
        ) from None


def _number(value, path: Path, key: str, kind: type):
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ReportError(f"{path}: {key}={value!r} is not a number") from None


def _read_metrics(path: Path) -> tuple[dict[str, float] | None, str]:
    if not path.is_file():
        return None, "no metrics.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"metrics.json unreadable ({type(e).__name__})"
    if not isinstance(raw, dict):
        return None, "metrics.json is not a JSON object"
    metrics = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        metrics[str(key)] = float(value)
    return metrics, ""


def load_run(run_dir: Path, shown: str | None = None) -> Run:
    """Read one run directory: its overrides, relabel ratio and seed, and metrics (None when unfinished)."""
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    overrides = _read_yaml(hydra_dir / "overrides.yaml") or []
    if not isinstance(overrides, list):
        raise ReportError(f"{hydra_dir / 'overrides.yaml'}: expected a YAML list of overrides")
    config = _read_yaml(hydra_dir / "config.yaml") or {}
    if not isinstance(config, dict):
        raise ReportError(f"{hydra_dir / 'config.yaml'}: expected a YAML mapping")
    cfg_path = hydra_dir / "config.yaml"
    ratio = _number(config.get("relabel_ratio"), cfg_path, "relabel_ratio", float)
    seed = _number(config.get("seed"), cfg_path, "seed", int)
    metrics, reason = _read_metrics(run_dir / "metrics.json")
    return Run(
        path=run_dir,
        shown=str(shown if shown is not None else run_dir),
        method=method_of(str(o) for o in overrides),
        relabel_ratio=ratio,
        seed=seed,
        metrics=metrics,
        reason=reason,
        overrides=[str(o) for o in overrides],
    )


def _is_run(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file()


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run directory at or below each path, each once, sorted by method, ratio, seed and path."""
    runs: dict[Path, Run] = {}
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise ReportError(f"{given}: no such directory")
        if not root.is_dir():
            raise ReportError(f"{given}: not a directory; give a multirun or run directory")
        found = []
        if _is_run(root):
            found.append((root, str(given)))
        else:
            for dirpath, dirnames, _ in os.walk(root):
                here = Path(dirpath)
                if _is_run(here):
                    found.append((here, str(Path(given) / here.relative_to(root))))
                    dirnames[:] = []  # a run's checkpoints/ and csv/ hold no further runs
                    continue
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if not found:
            raise ReportError(f"{given}: no runs found (no .hydra/overrides.yaml at or below it)")
        for run_dir, shown in found:
            key = run_dir.resolve()
            if key not in runs:
                runs[key] = load_run(run_dir, shown)
    shared = shared_settings(list(runs.values()))
    for run in runs.values():
        run.method = method_of(run.overrides, shared)
    return sorted(runs.values(), key=_run_order)


def _method_order(method: str) -> tuple[bool, str]:
    return (method != DEFAULT_METHOD, method)


def _run_order(run: Run):
    last = math.inf
    return (
        _method_order(run.method),
        last if run.relabel_ratio is None else run.relabel_ratio,
        last if run.seed is None else run.seed,
        _natural(run.shown),
    )


def _natural(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _fmt_ratio(ratio: float | None) -> str:
    return "?" if ratio is None else f"{ratio:g}"


def levels(runs: Iterable[Run]) -> list[int]:
    """The levels l with a ``test/acc_l{l}`` in some finished run, ascending."""
    found = set()
    for run in runs:
        for key in run.metrics or {}:
            m = _ACC.match(key)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def summary(runs: Iterable[Run], key: str) -> dict[tuple[str, float | None], tuple[float, float, int]]:
    """``(method, relabel_ratio) -> (mean, std, n)`` of metric ``key`` over the finished runs that have it.

    ``std`` is the sample standard deviation (n - 1), NaN for a single run. Failed runs never count."""
    groups: dict[tuple[str, float | None], list[float]] = {}
    for run in runs:
        if run.metrics is not None and key in run.metrics:
            groups.setdefault((run.method, run.relabel_ratio), []).append(run.metrics[key])
    out = {}
    for group, values in groups.items():
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        out[group] = (statistics.fmean(values), std, len(values))
    return out


def _cell(stats: tuple[float, float, int] | None, n_max: int, has_runs: bool) -> str:
    if stats is None:
        return "n=0" if has_runs else "–"  # runs there, none finished with this metric / no runs at all
    mean, std, n = stats
    text = f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"
    return f"{text} (n={n})" if n < n_max else text


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _method_cell(method: str) -> str:
    return method if method == DEFAULT_METHOD else f"`{_escape(method)}`"


def _table(runs: list[Run], columns: list[tuple[str, str]]) -> list[str]:
    """A Markdown table, a row per method, a column per (relabel ratio, metric key)."""
    methods = sorted({r.method for r in runs}, key=_method_order)
    ratios = _ratios(runs)
    stats = {key: summary(runs, key) for _, key in columns}
    n_max = max((n for s in stats.values() for _, _, n in s.values()), default=0)
    groups = {(r.method, r.relabel_ratio) for r in runs}
    header = ["method"] + [f"r={_fmt_ratio(ratio)} {label}" for ratio in ratios for label, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        cells = [_method_cell(method)]
        for ratio in ratios:
            for _, key in columns:
                cells.append(_cell(stats[key].get((method, ratio)), n_max, (method, ratio) in groups))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ratios(runs: Iterable[Run]) -> list[float | None]:
    return sorted({r.relabel_ratio for r in runs}, key=lambda x: (x is None, x or 0.0))


def _acc_columns(runs: list[Run]) -> list[tuple[str, str]]:
    return [(f"l{level}", f"{PREFIX}acc_l{level}") for level in levels(runs)]


def _other_columns(runs: list[Run]) -> list[tuple[str, str]]:
    present = {key for r in runs for key in (r.metrics or {})}
    return [(name, PREFIX + name) for name in OTHER_METRICS if PREFIX + name in present]


def accuracy_table(runs: list[Run]) -> str:
    """The accuracy table alone (what the command prints)."""
    columns = _acc_columns(runs)
    if not columns:
        return "(no finished run has test/acc_l* metrics)"
    return "\n".join(_table(runs, columns))


def markdown(runs: list[Run], sources: Sequence[str] = ()) -> str:
    """``results.md``: the accuracy table, the other metrics, the failed or unfinished runs."""
    ok = [r for r in runs if r.status == "ok"]
    failed = [r for r in runs if r.status != "ok"]
    where = f" under {', '.join(f'`{s}`' for s in sources)}" if sources else ""
    lines = [
        "# Results",
        "",
        f"{len(runs)} runs{where}: {len(ok)} finished, {len(failed)} failed or unfinished. "
        "Each cell is the mean ± sample standard deviation (n − 1) over the finished seeds; "
        "`(n=k)` marks a cell with fewer finished seeds than the fullest one; a single seed shows its value alone; "
        "`n=0`: runs there, none finished with that metric; `–`: no runs.",
        "",
    ]
    shared = shared_settings(runs)
    if shared:
        lines += [
            f"Settings every run has, left out of the row names: {', '.join(f'`{_escape(s)}`' for s in shared)}.",
            "",
        ]
    lines += [
        "## Accuracy per level (`test/acc_l{l}`)",
        "",
        accuracy_table(runs),
        "",
    ]
    other = _other_columns(runs)
    if other:
        lines += ["## Other metrics", "", *_table(runs, other), ""]
    # The same seed finished twice (e.g. a sweep given twice under two dirs): both count, and the file says so.
    repeated = Counter((r.method, r.relabel_ratio, r.seed) for r in ok if r.seed is not None)
    repeats = sorted((k for k, c in repeated.items() if c > 1), key=lambda k: (_method_order(k[0]), k[1:]))
    if repeats:
        lines += [
            "## Repeated seeds",
            "",
            "These finished more than once and each run counts in the mean:",
            "",
        ]
        lines += [f"- {_method_cell(m)} r={_fmt_ratio(ratio)} seed={seed}" for m, ratio, seed in repeats]
        lines.append("")
    lines += ["## Failed or unfinished runs", ""]
    if failed:
        lines += ["| run | method | relabel_ratio | seed | why |", "|---|---|---|---|---|"]
        for r in failed:
            seed = "?" if r.seed is None else r.seed
            lines.append(
                f"| `{_escape(r.shown)}` | {_method_cell(r.method)} | {_fmt_ratio(r.relabel_ratio)} | {seed} | {r.reason} |"
            )
    else:
        lines.append("None: every run wrote metrics.json.")
    return "\n".join(lines) + "\n"


def _metric_keys(runs: Iterable[Run]) -> list[str]:
    return sorted({key for r in runs for key in (r.metrics or {})}, key=_natural)


def results_csv(runs: list[Run]) -> str:
    keys = _metric_keys(runs)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run_dir", "method", "relabel_ratio", "seed", "status", *keys])
    for r in runs:
        metrics = r.metrics or {}
        row = [r.shown, r.method, "" if r.relabel_ratio is None else f"{r.relabel_ratio:g}"]
        row += ["" if r.seed is None else r.seed, r.status]
        row += [repr(metrics[k]) if k in metrics else "" for k in keys]
        writer.writerow(row)
    return buf.getvalue()


def plot_png(runs: list[Run]) -> bytes:
    """``accuracy_vs_relabel_ratio.png``: a panel per level, a line per method with std error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    levs = levels(runs)
    fig = Figure(figsize=(4.2 * max(len(levs), 1), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    if not levs:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no finished runs with test/acc_l* metrics", ha="center", va="center")
        ax.set_axis_off()
    else:
        axes = fig.subplots(1, len(levs), squeeze=False)[0]
        methods = sorted({r.method for r in runs}, key=_method_order)
        for ax, level in zip(axes, levs, strict=True):
            stats = summary(runs, f"{PREFIX}acc_l{level}")
            for i, method in enumerate(methods):
                points = sorted(
                    (ratio, mean, 0.0 if math.isnan(std) else std)
                    for (m, ratio), (mean, std, _) in stats.items()
                    if m == method and ratio is not None
                )
                if not points:
                    continue
                xs, ys, errs = zip(*points, strict=True)
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=f"C{i % 10}", label=method)
            ax.set_xticks([r for r in _ratios(runs) if r is not None])
            ax.set_title(f"level {level}")
            ax.set_xlabel("relabel ratio")
            ax.set_ylabel(f"test accuracy (acc_l{level})")
            ax.grid(alpha=0.3)
        legend = {}  # label -> handle, over every panel (a method may lack a level)
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
        handles = [legend[m] for m in methods if m in legend]
        labels = [m for m in methods if m in legend]
        if handles:
            fig.legend(
                handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize="small"
            )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_report(runs: list[Run], out: Path, sources: Sequence[str] = ()) -> list[Path]:
    """Write the three files into ``out`` (created if needed); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payloads = [
        results_csv(runs).encode("utf-8"),
        markdown(runs, sources).encode("utf-8"),
        plot_png(runs),
    ]
    paths = [out / name for name in FILES]
    for path, payload in zip(paths, payloads, strict=True):
        atomic_write_bytes(path, payload)
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hrn.report",
        description="Tabulate and plot the runs of Hydra multiruns: mean ± std over seeds per method and "
        "relabel ratio.",
    )
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="multirun directories or single run directories"
    )
    parser.add_argument("--out", metavar="DIR", help="where to write the report (default: the first DIR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        runs = find_runs(args.dirs)
        out = Path(args.out) if args.out else Path(args.dirs[0])
        try:
            paths = write_report(runs, out, args.dirs)
        except OSError as e:
            raise ReportError(f"{out}: cannot write the report ({e.strerror or e})") from None
    except ReportError as e:
        print(f"hrn: error: {e}", file=sys.stderr)
        return 2
    failed = sum(r.status != "ok" for r in runs)
    print(accuracy_table(runs))
    print()
    print(
        f"{len(runs)} runs, {len(runs) - failed} finished, {failed} failed or unfinished (listed in results.md)"
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
