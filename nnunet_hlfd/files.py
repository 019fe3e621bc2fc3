"""Result files written whole or not at all: a temporary name, then a rename."""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nnunet_hlfd.errors import OutputFolderError


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` only if the block succeeds.

    The temporary name keeps the file's extension (writers such as SimpleITK choose the format by it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def output_folder(path: Path, option: str = "-o") -> Path:
    """``path`` as a folder to write into, refused (before anything is written) when it, or the nearest of its parents
    that exists, is a file."""
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise OutputFolderError(f"{option} {path} cannot be a folder{where}: give a folder to write into")
    return path


def write_text(path: Path, text: str) -> None:
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)


def _cell(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Columns in this order; None and NaN (undefined values) as empty cells."""
    with replaced_atomically(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _cell(row.get(k)) for k in columns} for row in rows)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
