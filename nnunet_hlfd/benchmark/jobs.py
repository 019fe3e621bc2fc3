"""The benchmark's split and its jobs: which model trains on which fold, in which order, and what it predicts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnunet_hlfd.benchmark.profiles import FOLD_ALL, HALF_TEACHERS, PLANS, SINGLE_MODEL_ROWS, TEACHER_TRAINER, Profile
from nnunet_hlfd.errors import BenchmarkError
from nnunet_hlfd.splits import disjoint_chunks


def benchmark_splits(cases: list[str], folds: int, test_fraction: float, seed: int = 0) -> dict:
    """A seeded test set, ``folds``-fold cross-validation on the rest, and per fold two limit-trained teacher folds
    (disjoint halves of its training cases, the fold's validation cases) appended after the CV folds."""
    rng = np.random.RandomState(seed)
    ordered = sorted(cases)
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    n_test = max(1, int(round(test_fraction * len(ordered))))
    test, development = sorted(shuffled[:n_test]), shuffled[n_test:]
    if len(development) < max(2, folds):
        raise BenchmarkError(f"{len(ordered)} cases leave {len(development)} for {folds}-fold cross-validation")
    chunks = [sorted(c.tolist()) for c in np.array_split(development, max(folds, 2))]
    cv = [{"train": sorted(set(development) - set(chunk)), "val": chunk} for chunk in chunks[:folds]]
    limit_trained = []
    for fold in cv:
        halves = disjoint_chunks(fold["train"], HALF_TEACHERS, rng)
        limit_trained += [{"train": half, "val": fold["val"]} for half in halves]
    if any(not fold["train"] for fold in limit_trained):
        raise BenchmarkError(f"{len(development)} development cases are too few for {HALF_TEACHERS} teachers per fold")
    return {"test": test, "folds": cv + limit_trained}


def half_teacher_folds(fold: int, folds: int) -> list[int]:
    return [folds + HALF_TEACHERS * fold + k for k in range(HALF_TEACHERS)]


@dataclass(frozen=True)
class Job:
    kind: str  # train | predict
    row: str
    trainer: str
    fold: int | str  # a cross-validation fold, or a single-model row's "all" / "ensemble" (SINGLE_MODEL_ROWS)
    plans: str = PLANS

    @property
    def name(self) -> str:
        return f"{self.kind} {self.row} fold {self.fold}"


def planned_jobs(profile: Profile) -> list[Job]:
    """Training jobs (teachers first, then fold by fold every row, then the students of fold 'all'), then the
    test-set predictions."""
    rows = [r for r in profile.rows if r != "teacher" and r not in SINGLE_MODEL_ROWS]
    fold_all = [r for r in profile.rows if SINGLE_MODEL_ROWS.get(r) == FOLD_ALL]
    jobs = [Job("train", "teacher", TEACHER_TRAINER, f) for f in profile.teacher_folds]
    if "multi_teacher" in rows:
        n = profile.cv_folds
        jobs += [
            Job("train", "limit-trained teacher", TEACHER_TRAINER, t)
            for f in profile.folds
            for t in half_teacher_folds(f, n)
        ]
    jobs += [row_job(profile, "train", row, f) for f in profile.folds for row in rows]
    jobs += [row_job(profile, "train", row, SINGLE_MODEL_ROWS[row]) for row in fold_all]
    jobs += [
        row_job(profile, "predict", row, f)
        for f in profile.folds
        for row in profile.rows
        if row not in SINGLE_MODEL_ROWS
    ]
    jobs += [
        row_job(profile, "predict", row, SINGLE_MODEL_ROWS[row]) for row in profile.rows if row in SINGLE_MODEL_ROWS
    ]
    return jobs


def row_job(profile: Profile, kind: str, row: str, fold: int | str) -> Job:
    trainer, plans = profile.trainer_and_plans(row)
    return Job(kind, row, trainer, fold, plans)
