"""Result files written whole or not at all: a temporary name, then a rename."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cell(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Columns in this order; None and NaN (undefined values) as empty cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _cell(row.get(k)) for k in columns} for row in rows)
    os.replace(tmp, path)
