"""An on-disk cache of resized images: decode and resize each image once, then read it memory-mapped.

The paper's transforms start with a deterministic Resize(550, 550); decoding a JPEG and resizing it cost more
than everything else a loader does. :class:`CachedFiles` decodes and resizes every image of a split once (in
parallel, with a progress bar) into one uint8 ``.npy`` file of shape (M, 3, S, S), reused by every later run
and read memory-mapped: a sample is a copy of one row, and the page cache shares it between workers.

A cache file is named by a digest of what it holds: the image size S, the downsampling scale (the degrade
protocol's images are cached at their scale, the whole split at once so any relabel choice reuses them) and
each file's path, size and modification time. A changed, added or removed image, or another size, gives
another name and so a fresh cache; nothing stale is ever read. Files are built under a temporary name and
renamed, behind a lock (``filelock``: fcntl on POSIX, msvcrt on Windows), so parallel processes (DDP ranks,
sweep jobs) build a cache once and never read a half-written one. Delete the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

from hrn.data.base import DataError, ImageSource, usable_workers

__all__ = ["CachedFiles", "default_cache_dir"]

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the cache's content changes for the same inputs (another resize, another layout)


def default_cache_dir() -> Path:
    """``$HRN_CACHE_DIR``, else ``$XDG_CACHE_HOME/hrn``, else ``~/.cache/hrn``."""
    if os.environ.get("HRN_CACHE_DIR"):
        return Path(os.environ["HRN_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hrn"


class _Decode(Dataset):
    """Decodes for the cache build in loader workers; a bad image comes back as its one-line message (an
    exception raised in a worker would reach the user as a multi-line traceback)."""

    def __init__(self, source: ImageSource, scale: float) -> None:
        self.source, self.scale = source, scale

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        try:
            return i, self.source(i, self.scale), ""
        except DataError as e:
            return i, torch.zeros(0, dtype=torch.uint8), str(e)


def _rows(batch):
    return batch  # keep (i, image, error) triples as they are


class CachedFiles(ImageSource):
    """Serves ``decoded``'s images from the cache, building it on :meth:`prepare`.

    Args:
        decoded: the source that decodes and resizes a file (``hrn.data.files.DecodedFiles``); its ``paths``
            and ``size`` name the cache.
        name: readable prefix of the cache files (dataset and split).
        cache_dir: the folder of the cache files (:func:`default_cache_dir` when None).
        num_workers: processes that decode while building.
    """

    def __init__(
        self, decoded: ImageSource, name: str, cache_dir: str | Path | None = None, num_workers: int = 0
    ) -> None:
        self.decoded = decoded
        self.size = decoded.size
        self.name = name
        self.folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.num_workers = usable_workers(num_workers)
        self._files: dict[float, Path] = {}
        self._open: dict[float, np.ndarray] = {}  # memory maps, opened lazily in each process

    def __len__(self) -> int:
        return len(self.decoded)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = {}  # a worker maps the files itself; pickling a map would copy the whole array
        return state

    def _digest(self, scale: float) -> str:
        h = hashlib.sha256(f"{FORMAT}|{self.size}|{scale!r}".encode())
        for path in self.decoded.paths:
            st = Path(path).stat()
            h.update(f"|{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def path(self, scale: float) -> Path:
        """The cache file for ``scale``: name, size and scale to read, digest to tell versions apart."""
        if scale not in self._files:
            tag = "" if scale == 1.0 else f"-x{scale:g}"
            self._files[scale] = self.folder / f"{self.name}-{self.size}px{tag}-{self._digest(scale)}.npy"
        return self._files[scale]

    def prepare(self, scales: set[float]) -> None:
        for scale in sorted(scales, reverse=True):
            path = self.path(scale)
            if path.is_file():
                continue
            self.folder.mkdir(parents=True, exist_ok=True)
            # another process may be building it: wait, then use its file
            with FileLock(path.with_suffix(".lock")):
                if not path.is_file():
                    self._build(scale, path)

    def _build(self, scale: float, path: Path) -> None:
        m, s = len(self), self.size
        need = m * 3 * s * s
        free = shutil.disk_usage(self.folder).free
        if need > free:
            raise DataError(
                f"dataset.cache_dir={self.folder}: the image cache needs {need / 1e9:.1f} GB and "
                f"{free / 1e9:.1f} GB are free; point dataset.cache_dir elsewhere or set dataset.cache=false"
            )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        log.info("caching %d images of %s at %d px (scale %g) in %s", m, self.name, s, scale, path)
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(m, 3, s, s))
        loader = DataLoader(
            _Decode(self.decoded, scale), batch_size=16, num_workers=self.num_workers, collate_fn=_rows
        )
        try:
            with _progress(m, f"caching {self.name} ({s} px)") as bar:
                for batch in loader:
                    for i, image, error in batch:
                        if error:
                            raise DataError(error)
                        rows[i] = image.numpy()
                    bar(len(batch))
            rows.flush()
            del rows
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _map(self, scale: float) -> np.ndarray:
        if scale not in self._open:
            path = self.path(scale)
            if not path.is_file():  # prepare() was not called in this process's parent: build now
                self.prepare({scale})
            self._open[scale] = np.load(path, mmap_mode="r")
        return self._open[scale]

    def __call__(self, i: int, scale: float = 1.0) -> torch.Tensor:
        return torch.from_numpy(np.array(self._map(scale)[i]))

    def image(self, i: int, scale: float) -> np.ndarray:
        return self._map(scale)[i]  # a view of the map: the window copy is the only read


class _progress:
    """A progress bar on stderr (tqdm, which Lightning already depends on), silent when stderr is no terminal
    except for a log line."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), file=sys.stderr)

    def __enter__(self):
        return self.bar.update

    def __exit__(self, *exc) -> None:
        self.bar.close()
