"""What a command does when it fails: one line on stderr and exit status 2 for the package's own errors, never a
traceback; in a sweep (``-m``), the job is recorded as failed and the sweep goes on to the next job, and at the end
the sweep lists the jobs that failed and exits non-zero."""

from __future__ import annotations

import functools
import json
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from hrn.atomic import write_json
from hrn.errors import HRNError

__all__ = ["FAILED", "SweepSummary", "package_error", "report_errors", "sweep_failures"]

FAILED = "failed.json"
"""A job of a sweep that failed leaves this file in its run folder: ``kind`` (``rejected``: the package refused its
settings or data in one line; ``failed``: anything else), ``error``, ``overrides`` and ``job``. ``hrn.report`` lists
such runs apart."""

_STARTED = time.time()  # what this process wrote is newer than this
_FAILURES: list[dict] = []  # the failed jobs of the sweep this process runs (SweepSummary fills it)

# PyTorch re-raises an error of a loader worker as the same type with a multi-line message that holds the worker's
# traceback; its last line is "<module>.<Type>: <the original message>"
_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.", re.S)


def package_error(e: BaseException) -> HRNError | None:
    """The package's own error behind ``e``: ``e`` itself, or one it was raised *from* (Hydra's ``instantiate``
    wraps what a constructor raises); None for anything else, a bug, whose traceback the user must see. An error
    that was merely being handled when another one struck (``__context__``) does not count."""
    while e is not None and not isinstance(e, HRNError):
        e = e.__cause__
    return e


def _message(error: HRNError) -> str:
    text = str(error)
    if _WORKER.match(text):  # raised in a loader worker: the original message, not PyTorch's report of it
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _job() -> tuple[Path, list[str], int]:
    hydra = HydraConfig.get()
    return Path(hydra.runtime.output_dir), list(hydra.overrides.task), int(hydra.job.num)


def _forget_rejected_run() -> None:
    """A single run refused before it did anything leaves no folder: Hydra made it (``.hydra/`` and the job's log)
    before the command could look at its settings. Only what this process created and nothing else is removed."""
    if not HydraConfig.initialized() or HydraConfig.get().output_subdir is None:
        return
    hydra = HydraConfig.get()
    folder = Path(hydra.runtime.output_dir)
    ours = {hydra.output_subdir, f"{hydra.job.name}.log"}
    try:
        entries = list(folder.iterdir())
        if not entries or {p.name for p in entries} - ours:
            return  # something else is there: a run's own files, or the user's
        if any(p.stat().st_mtime < _STARTED for p in [*entries, *folder.rglob("*")]):
            return  # a resumed run's folder, made before this process started
        for p in entries:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        folder.rmdir()
        for parent in folder.parents:  # the date folder Hydra made, when this run was its only one
            if parent == Path.cwd() or parent == Path(parent.anchor) or any(parent.iterdir()):
                break
            parent.rmdir()
    except OSError:
        pass  # best effort: a folder left behind is untidy, not wrong


def _record_failure(kind: str, error: str) -> None:
    """The job's ``failed.json``, and one line on stderr naming the job."""
    folder, overrides, job = _job()
    record = {"kind": kind, "error": error, "overrides": overrides, "job": job}
    write_json(folder / FAILED, record)
    _FAILURES.append(record)
    print(
        f"hrn: error: job {job} ({' '.join(overrides) or 'no overrides'}): {error}",
        file=sys.stderr,
        flush=True,
    )


def report_errors(fn: Callable) -> Callable:
    """Wrap a command's Hydra task: the package's own errors become one line on stderr and exit status 2 (no
    traceback), and a single run refused that way leaves no folder. In a sweep a failing job does not end the
    sweep: its error (one line, or the traceback of a bug) is shown, written to the job's :data:`FAILED`, and the
    next job runs; :class:`SweepSummary` lists the failures at the end and the command exits non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        sweep = _in_sweep()
        if sweep:
            (_job()[0] / FAILED).unlink(missing_ok=True)  # a rerun of the job in the same folder starts clean
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            error = package_error(e)
            if sweep:
                if error is None:
                    traceback.print_exc()
                    _record_failure("failed", f"{type(e).__name__}: {' '.join(str(e).split())}")
                else:
                    _record_failure(getattr(error, "kind", "rejected"), _message(error))
                return None
            if error is None:
                raise
            print(f"hrn: error: {_message(error)}", file=sys.stderr)
            _forget_rejected_run()
            raise SystemExit(2) from None

    return wrapper


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks``): at the end of a sweep, the jobs that failed, one line each, from their
    :data:`FAILED` files (so jobs that ran in other processes, as with the SLURM launcher, count too)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        _FAILURES.clear()

    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(str(config.hydra.sweep.dir))
        found = []
        for path in sorted(root.rglob(FAILED)) if root.is_dir() else []:
            try:
                if path.stat().st_mtime >= _STARTED:  # this sweep's, not an earlier one's in the same folder
                    found.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        jobs = {f.get("job") for f in _FAILURES}
        _FAILURES.extend(f for f in found if f.get("job") not in jobs)
        if _FAILURES:
            _FAILURES.sort(key=lambda f: (f.get("job") is None, f.get("job")))
            print(f"hrn: error: {len(_FAILURES)} job(s) of the sweep failed:", file=sys.stderr)
            for f in _FAILURES:
                print(
                    f"  job {f.get('job')} ({' '.join(f.get('overrides') or [])}): {f.get('error')}",
                    file=sys.stderr,
                )


def sweep_failures(clear: bool = False) -> list[dict]:
    """The failed jobs of the sweep this process just ran (empty when none failed, or for a single run);
    ``clear``: forget them (before the next command runs in this process)."""
    out = list(_FAILURES)
    if clear:
        _FAILURES.clear()
    return out
