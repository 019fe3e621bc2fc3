"""Which cases a run trains on: a fixed, seeded fraction of a fold's training cases."""

from __future__ import annotations

import numpy as np

from nnunet_hlfd.errors import OptionError

TRAINING_CASES_FILE = "hlfd_training_cases.json"


def check_fraction(fraction: float) -> None:
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise OptionError(f"training_fraction must be a number in (0, 1], got {fraction!r}")


def training_subset(keys: list[str], fraction: float, seed: int = 0) -> list[str]:
    """round(fraction × n) of ``keys`` (at least one), drawn with ``seed``, in sorted order.

    Depends only on the set of keys, the fraction and the seed: a resumed run, another method or another machine
    draws the same cases, and with one seed a larger fraction contains every smaller one.
    """
    check_fraction(fraction)
    ordered = sorted(keys)
    order = np.random.RandomState(seed).permutation(len(ordered))
    count = max(1, int(round(fraction * len(ordered))))
    return sorted(ordered[i] for i in order[:count])
