"""Reports of Hydra sweeps: the runs read back (:mod:`~hrn.reports.runs`) and the table, CSV and plot made of them
(:mod:`~hrn.reports.tables`), what ``python -m hrn.report`` writes."""

from hrn.reports.runs import DEFAULT_METHOD, ReportError, Run, find_runs, method_of, shared_settings, summary
from hrn.reports.tables import accuracy_table, markdown, write_report

__all__ = [
    "DEFAULT_METHOD",
    "ReportError",
    "Run",
    "accuracy_table",
    "find_runs",
    "markdown",
    "method_of",
    "shared_settings",
    "summary",
    "write_report",
]
