"""The user's own taxonomy: a folder of images, a tree file and a labels file — no code to write.

Layout under ``root``::

    tree.csv     parent,child            (or tree.json: a list of [parent, child] pairs)
    labels.csv   path,label[,split]      path relative to root; label = any node of the tree; split = train|val|test

A coarse-labelled image is a row whose label is a coarse node. Without a ``split`` column, a seeded per-label
split by ``test_fraction`` and ``val_fraction``; with one but no ``val`` rows, ``val_fraction`` of the training
rows are held out for validation.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

from hrn.data.base import DataError, DataSplits
from hrn.data.files import FileSettings, Sample, make_splits, split_off_validation
from hrn.tree import Hierarchy, HierarchyError

__all__ = ["folder"]

SPLITS = ("train", "val", "test")


def read_labels(path: Path, h: Hierarchy) -> tuple[list[tuple[Sample, str | None]], bool]:
    """Rows of ``labels.csv`` as (sample, split or None); and whether the file has a split column."""
    if not path.is_file():
        raise DataError(f"{path}: labels file not found; expected a CSV with header 'path,label[,split]'")
    try:
        return _read_labels(path, h)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({e})") from None


def _read_labels(path: Path, h: Hierarchy) -> tuple[list[tuple[Sample, str | None]], bool]:
    rows = []
    first_line: dict[str, int] = {}  # each path's first row: a path listed twice is refused with both lines
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [c.strip() for c in next(reader, [])]
        if header[:2] != ["path", "label"] or header[2:] not in ([], ["split"]):
            raise DataError(
                f"{path}: first line must be the header 'path,label' or 'path,label,split', "
                f"found {','.join(header)!r}"
            )
        has_split = len(header) == 3
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header) or not row[0].strip() or not row[1].strip():
                raise DataError(
                    f"{path}:{lineno}: expected {len(header)} non-empty fields "
                    f"({','.join(header)}), found {','.join(row)!r}"
                )
            rel, label = row[0].strip(), row[1].strip()
            key = Path(rel).as_posix()
            if key in first_line:
                raise DataError(
                    f"{path}:{lineno}: {rel} is listed again (first at line {first_line[key]}); an image has one "
                    "label and one split: keep one of the two rows"
                )
            first_line[key] = lineno
            try:
                target = h.index(label)
            except HierarchyError as e:
                raise DataError(f"{path}:{lineno}: {e} (fix the label or add it to the tree file)") from None
            split = row[2].strip() if has_split else None
            if has_split and split not in SPLITS:
                raise DataError(f"{path}:{lineno}: split {split!r} must be one of train, val, test")
            rows.append((Sample(path.parent / rel, target), split))
    return rows, has_split


def folder(
    root: str,
    tree: str = "tree.csv",
    labels: str = "labels.csv",
    pad: bool = False,
    test_fraction: float = 0.2,
    **settings,
) -> DataSplits:
    """The user's folder ``root`` (see the module docstring); ``settings``: the loader settings
    (:class:`~hrn.data.files.FileSettings`; images resized to 256 and cropped to 224 unless they say otherwise)."""
    files = FileSettings.of("folder", settings, resize=256, crop=224)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(
            f"dataset.root={root}: folder not found; expected {tree} (parent,child) and {labels} "
            "(path,label[,split]) in it"
        )
    h = Hierarchy.from_file(base / tree, pad=pad)
    rows, has_split = read_labels(base / labels, h)
    val = None
    if has_split:
        by_split = {s: [sample for sample, split in rows if split == s] for s in SPLITS}
        train, test = by_split["train"], by_split["test"]
        val = by_split["val"] or None
    else:
        if not 0.0 < test_fraction < 1.0:
            raise DataError(
                f"dataset.test_fraction={test_fraction!r} must be in (0, 1) when {labels} has no split column"
            )
        train, test = split_off_validation([s for s, _ in rows], test_fraction, files.split_seed)
        # val_fraction is a share of the whole, not of what the test split leaves
        files = replace(files, val_fraction=min(files.val_fraction / (1.0 - test_fraction), 0.99))
    return make_splits("folder", h, train, test, files, val=val, source=str(base / labels))
