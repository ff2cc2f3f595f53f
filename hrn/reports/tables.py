"""A report of sweep runs (:mod:`hrn.reports.runs`), written atomically into a folder:

- ``results.csv``: one row per run: ``run_dir, method, relabel_ratio, seed, status`` and every metric;
- ``results.md``: mean ± sample standard deviation (n - 1) over the finished seeds of ``test/acc_l{l}`` per method
  (rows) and relabel ratio × level (columns), the same for :data:`~hrn.reports.runs.OTHER_METRICS`, then the failed
  runs;
- ``accuracy_vs_relabel_ratio.png``: a panel per level, accuracy against relabel ratio, a line per method.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from hrn.atomic import atomic_write_bytes
from hrn.reports.runs import (
    DEFAULT_METHOD,
    OTHER_METRICS,
    PREFIX,
    Run,
    levels,
    method_order,
    natural_order,
    shared_settings,
    summary,
)

__all__ = ["FILES", "accuracy_table", "markdown", "plot_png", "results_csv", "write_report"]

FILES = ("results.csv", "results.md", "accuracy_vs_relabel_ratio.png")


def _fmt_ratio(ratio: float | None) -> str:
    return "?" if ratio is None else f"{ratio:g}"


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
    methods = sorted({r.method for r in runs}, key=method_order)
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
    present = {key for r in runs if r.status == "ok" for key in r.metrics}
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
    failed = [r for r in runs if r.status == "failed"]
    rejected = [r for r in runs if r.status == "rejected"]
    unreadable = [r for r in runs if r.status == "unreadable"]
    smoke = [r for r in runs if r.status == "smoke"]
    where = f" under {', '.join(f'`{s}`' for s in sources)}" if sources else ""
    smoke_note = f", {len(smoke)} smoke tests (`trainer.fast_dev_run`, never averaged)" if smoke else ""
    other_note = (f", {len(rejected)} rejected" if rejected else "") + (
        f", {len(unreadable)} unreadable" if unreadable else ""
    )
    lines = [
        "# Results",
        "",
        f"{len(runs)} runs{where}: {len(ok)} finished, {len(failed)} failed or unfinished{other_note}{smoke_note}. "
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
    repeats = sorted((k for k, c in repeated.items() if c > 1), key=lambda k: (method_order(k[0]), k[1:]))
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
    for title, group in (
        ("Rejected runs (the command refused their settings or data)", rejected),
        ("Unreadable runs (their .hydra files)", unreadable),
    ):
        if group:
            lines += ["", f"## {title}", "", "| run | why |", "|---|---|"]
            lines += [f"| `{_escape(r.shown)}` | {_escape(r.reason)} |" for r in group]
    if smoke:
        lines += ["", "## Smoke tests (`trainer.fast_dev_run`), never averaged", ""]
        lines += [f"- `{_escape(r.shown)}` {_method_cell(r.method)}" for r in smoke]
    return "\n".join(lines) + "\n"


def _metric_keys(runs: Iterable[Run]) -> list[str]:
    return sorted({key for r in runs for key in (r.metrics or {})}, key=natural_order)


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
        methods = sorted({r.method for r in runs}, key=method_order)
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
