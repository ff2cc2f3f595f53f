"""``python -m hrn.report <multirun dir> [<more dirs> ...] [--out DIR]``: one table from a Hydra sweep.

Finds every run (:mod:`hrn.reports.runs`), prints the accuracy table and writes ``results.csv``, ``results.md`` and
``accuracy_vs_relabel_ratio.png`` into the first directory, or ``--out DIR`` (:mod:`hrn.reports.tables`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hrn.reports.runs import ReportError, find_runs
from hrn.reports.tables import accuracy_table, write_report

__all__ = ["main"]


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
    count = {
        status: sum(r.status == status for r in runs)
        for status in ("ok", "failed", "rejected", "unreadable", "smoke")
    }
    print(accuracy_table(runs))
    print()
    print(
        f"{len(runs)} runs, {count['ok']} finished, {count['failed']} failed or unfinished"
        + (f", {count['rejected']} rejected (bad settings or data)" if count["rejected"] else "")
        + (f", {count['unreadable']} unreadable" if count["unreadable"] else "")
        + (f", {count['smoke']} smoke tests (trainer.fast_dev_run, never averaged)" if count["smoke"] else "")
        + " (listed in results.md)"
    )
    for r in runs:
        if r.status in ("rejected", "unreadable"):
            print(f"{r.status}: {r.shown}: {r.reason}", file=sys.stderr)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
