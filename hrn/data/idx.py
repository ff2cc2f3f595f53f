"""IDX files, the format of MNIST and Fashion-MNIST, gzip-compressed or plain.

An IDX file is a 4-byte magic number ``0x0000TTDD`` (TT the element type, 0x08 = uint8; DD the number of
dimensions), DD big-endian int32 sizes, then the payload in C order. Images are ``0x00000803`` (N, H, W), labels
``0x00000801`` (N,). Every way a file can be wrong raises one :class:`~hrn.data.base.DataError` line naming it.

Not torchvision's ``read_image_file`` / ``read_label_file``: they open a plain file by path only (no gzip, which
the Debian package and torchvision's own downloads ship), and a wrong file gives a bare ``AssertionError`` (gone
under ``python -O``) or a reshape error that names no file. The header checks below would stay in any case; what
torchvision would replace is the one ``frombuffer`` line, at the price of decompressing into a temporary file.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from hrn.data.base import DataError

__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "read_idx", "read_images_and_labels"]

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension
GZIP_MAGIC = b"\x1f\x8b"


def _file_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when they are a gzip stream. Decided by content, not by name: a browser
    may have decompressed a ``.gz`` download and kept its name."""
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        if not compressed:
            return path.read_bytes()
        with gzip.open(path) as stream:  # streamed: the compressed bytes are never all in memory
            return stream.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # a bad header, a cut-off stream, a CRC mismatch
        raise DataError(
            f"{path}: cannot decompress the gzip file ({e}); the download is incomplete or damaged, fetch it again"
        ) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None


def read_idx(path: str | Path, magic: int) -> torch.Tensor:
    """Read a uint8 IDX file whose magic number must be ``magic``: -> uint8 tensor of the header's shape."""
    path = Path(path)
    data = _file_bytes(path)
    kind = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}.get(magic, "IDX")
    if len(data) < 4 or int.from_bytes(data[:4], "big") != magic:
        found = f"0x{int.from_bytes(data[:4], 'big'):08x}" if len(data) >= 4 else f"only {len(data)} byte(s)"
        raise DataError(
            f"{path}: not an IDX {kind} file (magic number {found}, expected 0x{magic:08x}); check which file this is"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes); fetch the file again")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape)
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise DataError(
            f"{path}: {what}: the header says {' x '.join(map(str, shape))} = {expected} bytes of data, the file "
            f"holds {found}; fetch the file again"
        )
    # frombuffer shares the read-only bytes; one copy makes a tensor that owns writable memory
    return torch.from_numpy(
        np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(shape).copy()
    )


def read_images_and_labels(
    images_path: str | Path, labels_path: str | Path, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair of IDX files: uint8 images (N, H, W) and int64 labels (N,) in ``0..num_classes-1``."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC).long()
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}; the two files "
            "must come from the same split and release"
        )
    bad = (labels >= num_classes).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{labels_path}: label {int(labels[i])} at position {i} is outside 0..{num_classes - 1} "
            f"({len(bad)} such label(s)); not a labels file of this dataset"
        )
    return images, labels
