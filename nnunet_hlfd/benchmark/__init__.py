"""The KiTS phantom benchmark: from a folder of KiTS label maps to a report comparing KD methods.

Steps (each skipped when its result is already there, so an interrupted run continues where it stopped):

1. CT phantoms from the label maps (:mod:`.phantom`), in the KiTS layout;
2. the KiTS converter turns them into an nnU-Net raw dataset;
3. ``nnUNetv2_plan_and_preprocess``; the profile's plan changes (CPU: narrower, smaller batches) and the schedule
   are written into the plans once, before anything trains, so every row shares them (:mod:`.workspace`);
4. one split for all rows: a seeded held-out test set, and k-fold cross-validation on the rest (the folds are the
   repeats); for multi-teacher KD, two limit-trained teachers per fold on disjoint halves of its training cases
   (:mod:`.jobs`);
5. training with ``nnUNetv2_train`` (``--c`` after an interruption): the teacher, then every row, fold by fold;
6. ``nnUNetv2_predict`` of the test set and ``evaluate`` (:mod:`.harness`);
7. ``compare`` (mean ± std over folds, paired Wilcoxon against the student alone, gap recovered), ``efficiency``,
   the step-overhead benchmark (:mod:`.step_overhead`) and a qualitative figure, as a markdown report
   (:mod:`.report`).

The rows and profiles are in :mod:`.profiles`. A time limit splits the run into pieces: no job starts when it would
not finish in time, and a training past the deadline stops after its current epoch (checkpointed), to be resumed by
the next piece. Run it with ``nnunet_hlfd benchmark`` (:mod:`nnunet_hlfd.cli.benchmark`).
"""

from nnunet_hlfd.benchmark.harness import Harness
from nnunet_hlfd.benchmark.jobs import Job, benchmark_splits, half_teacher_folds, planned_jobs, row_job
from nnunet_hlfd.benchmark.profiles import (
    PLANS,
    PROFILES,
    REFERENCE_ROWS,
    ROWS,
    TEACHER_TRAINER,
    Profile,
    Schedule,
    Variant,
    with_folds,
    with_rows,
    with_tolerances,
    with_variants,
)
from nnunet_hlfd.benchmark.report import Report, dice_summary, reproducing_command
from nnunet_hlfd.benchmark.workspace import Workspace

__all__ = [
    "PLANS",
    "PROFILES",
    "REFERENCE_ROWS",
    "ROWS",
    "TEACHER_TRAINER",
    "Harness",
    "Job",
    "Profile",
    "Report",
    "Schedule",
    "Variant",
    "Workspace",
    "benchmark_splits",
    "dice_summary",
    "half_teacher_folds",
    "planned_jobs",
    "reproducing_command",
    "row_job",
    "with_folds",
    "with_rows",
    "with_tolerances",
    "with_variants",
]
