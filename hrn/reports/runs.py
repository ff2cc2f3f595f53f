"""The runs of Hydra sweeps, read back for a report: each run's method (its overrides less those in
:data:`NOT_METHOD`), relabel ratio, seed and test metrics, and the mean ± std of a metric over the seeds.

A run directory is one with ``.hydra/overrides.yaml``, at any depth. The rows of a report are *methods*: the run's
overrides less those named in :data:`NOT_METHOD`, sorted and joined by spaces (``loss=leaf_ce model.gsb=false``;
``hrn (default)`` when none is left). Overrides that every run has (``experiment=...``) leave the row names when there
are two methods or more. The relabel ratio and the seed come from the run's ``.hydra/config.yaml``, so defaults
count too. A run is ``ok`` when it wrote ``metrics.json`` and ``failed`` otherwise (it crashed or is still running);
failed runs are listed, never averaged.

Needs neither torch nor Lightning.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hrn.errors import HRNError

__all__ = [
    "DEFAULT_METHOD",
    "NOT_METHOD",
    "OTHER_METRICS",
    "PREFIX",
    "ReportError",
    "Run",
    "find_runs",
    "levels",
    "load_run",
    "method_of",
    "shared_settings",
    "summary",
]

NOT_METHOD = (
    "relabel_ratio", "seed", "run_dir", "hydra", "trainer", "callbacks", "logger", "compile", "channels_last"
)  # fmt: skip
"""Overrides that do not define the method: these keys and everything under them (``hydra.sweep.dir``,
``hydra/launcher``, ``trainer.max_epochs``, ...), with or without a leading ``+``, ``++`` or ``~``. The relabel
ratio and the seed are the table's columns and its repeats; the rest say where, how fast and how long a run ran."""

OTHER_METRICS = ("ap_micro", "full_path_acc", "mistake_severity")
"""The metrics (``test/<name>``) of the second table, each shown when some finished run has it."""

DEFAULT_METHOD = "hrn (default)"
PREFIX = "test/"
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
    smoke: bool = False  # a trainer.fast_dev_run smoke test: one batch, its metrics mean nothing
    problem: str = ""  # "rejected" (its settings refused in one line), "unreadable" (its Hydra files), or ""

    @property
    def status(self) -> str:
        """``ok`` (finished: its metrics count), ``smoke``, ``rejected`` (the command refused its settings or data:
        the job's ``failed.json`` says so), ``unreadable`` (its ``.hydra`` files cannot be read) or ``failed``
        (it broke, or wrote no readable metrics.json)."""
        if self.problem:
            return self.problem
        if self.smoke:
            return "smoke"
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


FAILED = "failed.json"  # what a failed job of a sweep leaves (hrn.cli.errors): its kind and error


def _failure(run_dir: Path) -> tuple[str, str]:
    """The ``kind`` and ``error`` of a run's ``failed.json`` (empty when there is none or it cannot be read)."""
    try:
        record = json.loads((run_dir / FAILED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "", ""
    if not isinstance(record, dict):
        return "", ""
    return str(record.get("kind") or "failed"), str(record.get("error") or "")


def load_run(run_dir: Path, shown: str | None = None) -> Run:
    """Read one run directory: its overrides, relabel ratio and seed, and metrics (None when unfinished). A run
    whose Hydra files cannot be read is kept, as ``unreadable`` with the reason: one bad folder never hides the
    others."""
    try:
        return _load_run(Path(run_dir), shown)
    except ReportError as e:
        return Run(
            path=Path(run_dir),
            shown=str(shown if shown is not None else run_dir),
            method="?",
            relabel_ratio=None,
            seed=None,
            metrics=None,
            reason=str(e),
            problem="unreadable",
        )


def _load_run(run_dir: Path, shown: str | None) -> Run:
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
    smoke = bool((config.get("trainer") or {}).get("fast_dev_run"))
    kind, error = _failure(run_dir)
    if kind:
        metrics, reason = None, error or reason
    return Run(
        path=run_dir,
        shown=str(shown if shown is not None else run_dir),
        method=method_of(str(o) for o in overrides),
        relabel_ratio=ratio,
        seed=seed,
        metrics=metrics,
        reason="trainer.fast_dev_run: a smoke test of one batch" if smoke and not kind else reason,
        overrides=[str(o) for o in overrides],
        smoke=smoke,
        problem="rejected" if kind == "rejected" else "",
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


def method_order(method: str) -> tuple[bool, str]:
    return (method != DEFAULT_METHOD, method)


def _run_order(run: Run):
    last = math.inf
    return (
        method_order(run.method),
        last if run.relabel_ratio is None else run.relabel_ratio,
        last if run.seed is None else run.seed,
        natural_order(run.shown),
    )


def natural_order(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def levels(runs: Iterable[Run]) -> list[int]:
    """The levels l with a ``test/acc_l{l}`` in some finished run, ascending."""
    found = set()
    for run in runs:
        for key in run.metrics if run.status == "ok" else {}:
            m = _ACC.match(key)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def summary(runs: Iterable[Run], key: str) -> dict[tuple[str, float | None], tuple[float, float, int]]:
    """``(method, relabel_ratio) -> (mean, std, n)`` of metric ``key`` over the finished runs that have it.

    ``std`` is the sample standard deviation (n - 1), NaN for a single run. Failed runs never count."""
    groups: dict[tuple[str, float | None], list[float]] = {}
    for run in runs:
        if run.status == "ok" and key in run.metrics:
            groups.setdefault((run.method, run.relabel_ratio), []).append(run.metrics[key])
    out = {}
    for group, values in groups.items():
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        out[group] = (statistics.fmean(values), std, len(values))
    return out
