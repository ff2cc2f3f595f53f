"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target, so a
crash or a kill never leaves a half-written result (metrics, predictions, reports) where a good one was."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "json_text", "strict", "write_json"]

_UMASK = os.umask(0)
os.umask(_UMASK)  # reading the umask means setting it; put it back at once


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (the folder is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should be as readable as any new file
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(obj):
    """``obj`` with every NaN or infinite float replaced by None: JSON has no NaN, and strict readers (``jq``,
    JavaScript's ``JSON.parse``) refuse Python's bare ``NaN``. A metric that is undefined (no sample to measure it
    on) is written as ``null``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    return obj


def json_text(obj, **kwargs) -> str:
    """Strict JSON of ``obj`` (:func:`strict`): what every file and line of JSON the package writes holds."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented, key-sorted, strict JSON (:func:`strict`), atomically."""
    atomic_write_bytes(path, (json_text(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
