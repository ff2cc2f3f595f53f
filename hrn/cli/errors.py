"""One line on stderr and exit status 2 for the package's own errors, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from hrn.errors import HRNError

__all__ = ["report_errors"]


def report_errors(fn: Callable) -> Callable:
    """Turn the package's own errors into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, HRNError):  # Hydra's instantiate wraps errors
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            print(f"hrn: error: {cause}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
