"""The benchmark's rows, schedules and profiles (cpu, gpu, smoke), and the command-line changes to a profile."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace

from nnunet_hlfd.benchmark.phantom import PhantomSettings
from nnunet_hlfd.errors import BenchmarkError, OptionError
from nnunet_hlfd.evaluation.metrics import DEFAULT_TOLERANCE_MM
from nnunet_hlfd.runtime import SCHEDULE_KEY, TEACHER_SCHEDULE_KEY

# The compared rows: name -> trainer (each follows the schedule the harness writes into the plans); a row has the
# name of its method. "teacher" and "student" are the references of the comparison (gap recovered =
# (row − student) / (teacher − student)).
ROWS = {
    "teacher": "nnUNetTrainerHLFDTeacher",
    "student": "nnUNetTrainerStudent",
    "hlfd": "nnUNetTrainerHLFD",
    "hlfd_paper": "nnUNetTrainerHLFD_paper",
    "logit_kd": "nnUNetTrainerLogitKD",
    "at": "nnUNetTrainerAT",
    "cwd": "nnUNetTrainerCWD",
    "structured_kd": "nnUNetTrainerStructuredKD",
    "hlfd_attention_only": "nnUNetTrainerHLFD_attention_only",
    "hlfd_without_feedback": "nnUNetTrainerHLFD_without_feedback",
    "hlfd_layerwise": "nnUNetTrainerHLFD_layerwise",
    "hlfd_individual_feedback": "nnUNetTrainerHLFD_individual_feedback",
    "hlfd_concatenated_feedback": "nnUNetTrainerHLFD_concatenated_feedback",
    "multi_teacher": "nnUNetTrainerMultiTeacher",
    "multi_scale_contrastive": "nnUNetTrainerMultiScaleContrastive",
    # weight inheritance: the student starts from its teacher's weights (nnunet_hlfd.inheritance)
    "student_init": "nnUNetTrainerStudent_init",
    "hlfd_init": "nnUNetTrainerHLFD_init",
    "cwd_init": "nnUNetTrainerCWD_init",
    "at_init": "nnUNetTrainerAT_init",
    "student_w025": "nnUNetTrainerStudent_w025",
    "student_w025_init": "nnUNetTrainerStudent_w025_init",
    "hlfd_w025_init": "nnUNetTrainerHLFD_w025_init",
    # the teacher's cross-validation folds predicting together (nnUNetv2_predict -f 0 1 2), and that ensemble
    # distilled into one inherited student trained on every development case (fold 'all')
    "teacher_ensemble": "nnUNetTrainerHLFDTeacher",
    "fold_ensemble_init": "nnUNetTrainerFoldEnsembleKD_init",
}
REFERENCE_ROWS = ("teacher", "student")
# Rows that are not one model per cross-validation fold, and the "fold" of their one job (Job.fold): the teacher's
# folds predicting as an ensemble (no training), and a student trained on fold 'all' (every development case)
ALL_FOLDS = "ensemble"
FOLD_ALL = "all"
SINGLE_MODEL_ROWS = {"teacher_ensemble": ALL_FOLDS, "fold_ensemble_init": FOLD_ALL}
# Besides the half-width "student", the student alone a row is also measured against (Δ, paired p, gap recovered):
# a quarter-width row against the quarter-width student, since width alone moves Dice; and a row that distils into an
# inherited student against the inherited student alone, the baseline distillation on top of inheritance must beat.
WIDTH_BASELINES = {"student_w025_init": "student_w025", "hlfd_w025_init": "student_w025"}
INHERITED_BASELINES = {
    "hlfd": "student_init",  # nnUNetTrainerHLFD starts from its teacher's weights
    "hlfd_init": "student_init",
    "cwd_init": "student_init",
    "at_init": "student_init",
    "hlfd_w025_init": "student_w025_init",
}
TEACHER_ROWS = ("teacher", "limit-trained teacher")
TEACHER_TRAINER = ROWS["teacher"]
PLANS = "nnUNetPlans"
HALF_TEACHERS = 2  # limit-trained teachers per fold for the multi-teacher row


@dataclass(frozen=True)
class Schedule:
    epochs: int
    iterations: int
    val_iterations: int
    mirroring: bool  # mirror augmentation in training
    seed: int | None = None  # every row of fold k starts from seed + k (see nnunet_hlfd.trainers.planned_schedule)
    test_time_mirroring: bool | None = None  # in validation and prediction; None: as ``mirroring``

    @property
    def tta(self) -> bool:
        return self.mirroring if self.test_time_mirroring is None else self.test_time_mirroring


SCHEDULE_OPTION = "schedule"  # in a variant's options JSON: changes to the rows' schedule, e.g. {"epochs": 100}


@dataclass(frozen=True)
class Variant:
    """An extra row: another row's trainer with other options. The options go into the "hlfd" block of a copy of
    the plans (``nnUNetPlans_<name>``: same preprocessed data, schedule and split), so nothing else differs; a
    ``"schedule"`` entry changes that copy's schedule instead (e.g. a longer one), the seed and split staying."""

    name: str
    row: str
    options: tuple[tuple[str, object], ...]
    schedule: tuple[tuple[str, object], ...] = ()  # the fields of the rows' Schedule this variant changes

    @property
    def plans(self) -> str:
        return f"{PLANS}_{self.name}"

    @property
    def options_json(self) -> str:
        return json.dumps({**dict(self.options), **({SCHEDULE_OPTION: dict(self.schedule)} if self.schedule else {})})


@dataclass(frozen=True)
class Profile:
    name: str
    configuration: str
    device: str
    phantom: PhantomSettings
    schedule: Schedule
    dataset_id: int
    cv_folds: int = 3  # the split's cross-validation folds
    folds: tuple[int, ...] = (0, 1, 2)  # the folds run (``--folds`` picks a subset)
    rows: tuple[str, ...] = tuple(ROWS)
    teacher_schedule: Schedule | None = None  # None: the teacher trains with the students' schedule
    # (label or region, Dice): the teacher's mean cross-validation Dice must reach these before any row trains
    teacher_min_dice: tuple[tuple[str, float], ...] = ()
    test_fraction: float = 0.25
    max_cases: int | None = None
    # plan changes for small machines; empty: nnU-Net's plans as planned
    base_features: int | None = None
    max_features: int | None = None
    batch_size: int | None = None
    data_augmentation_workers: int = 2
    export_processes: int = 1
    step_overhead_iterations: int = 10  # 0: not run
    efficiency_cases: int = 2  # test cases the efficiency table times; 0: not measured
    variants: tuple[Variant, ...] = ()
    # NSD's tolerance: (None, mm) for every label/region, (name, mm) per label/region (``--tolerance-mm``)
    nsd_tolerances_mm: tuple[tuple[str | None, float], ...] = ((None, DEFAULT_TOLERANCE_MM),)

    @property
    def teacher_folds(self) -> tuple[int, ...]:
        """The folds the teacher trains on: every cross-validation fold when its convergence is checked (the check
        judges the teacher's whole cross-validation) or a row uses its fold ensemble, else the folds run."""
        every_fold = self.teacher_min_dice or any(row in SINGLE_MODEL_ROWS for row in self.rows)
        return tuple(range(self.cv_folds)) if every_fold else self.folds

    def row_folds(self, row: str) -> tuple[int | str, ...]:
        """The folds of a row's models: one per fold run, or the one job of a single-model row."""
        return (SINGLE_MODEL_ROWS[row],) if row in SINGLE_MODEL_ROWS else self.folds

    @property
    def schedules(self) -> dict[str, dict]:
        """The plans keys and values of the students' and (if it differs) the teacher's schedule."""
        planned = {SCHEDULE_KEY: asdict(self.schedule)}
        if self.teacher_schedule is not None:
            planned[TEACHER_SCHEDULE_KEY] = asdict(self.teacher_schedule)
        return planned

    def trainer_and_plans(self, row: str) -> tuple[str, str]:
        variant = next((v for v in self.variants if v.name == row), None)
        return (ROWS[variant.row], variant.plans) if variant else (ROWS[row], PLANS)

    def comparisons(self) -> dict[str, list[str]]:
        """The test-set comparisons, baseline -> its runs (the teacher and the baseline first): every row against
        the half-width ``student``, or the random-init student of its width when that row is run; then each
        inherited student alone that is run against the rows that distil into it. A variant is compared as its
        row."""
        variant_rows = {v.name: v.row for v in self.variants}
        groups = {"student": ["teacher", "student"]}
        for row in self.rows:
            if row in REFERENCE_ROWS:
                continue
            if row in SINGLE_MODEL_ROWS:  # the fold ensemble and its student: also against the single teacher
                groups["student"].append(row)
                groups.setdefault("teacher", ["teacher"]).append(row)
                continue
            method = variant_rows.get(row, row)
            width_baseline = WIDTH_BASELINES.get(method)
            baseline = width_baseline if width_baseline in self.rows else "student"
            groups.setdefault(baseline, ["teacher", baseline]).append(row)
            inherited_baseline = INHERITED_BASELINES.get(method)
            if inherited_baseline in self.rows:
                groups.setdefault(inherited_baseline, ["teacher", inherited_baseline]).append(row)
        return groups


PROFILES = {
    # the paper's 2D setting on 2 CPU cores: a converged teacher (trained longer, checked before any row), every row
    # with one shorter schedule and the same seed per fold; mirror augmentation in training, none at test time
    "cpu": Profile(
        "cpu", "2d", "cpu", PhantomSettings(in_plane_mm=2.0, slice_mm=4.0),
        Schedule(50, 25, 5, True, seed=0, test_time_mirroring=False), 504,
        rows=("teacher", "student", "student_init", "hlfd", "hlfd_paper", "cwd_init", "at_init"),
        teacher_schedule=Schedule(100, 25, 5, True, seed=0, test_time_mirroring=False),
        teacher_min_dice=(("tumor", 0.6),), base_features=16, max_features=256, batch_size=8,
        data_augmentation_workers=0,
    ),
    # nnU-Net's default 3d_fullres plans on one H100-class GPU, in pieces of at most 25 minutes
    # (not run yet: the teacher's longer schedule is a guess, the convergence check decides before any row trains)
    "gpu": Profile(
        "gpu", "3d_fullres", "cuda", PhantomSettings(in_plane_mm=1.0, slice_mm=2.0),
        Schedule(100, 100, 20, True, seed=0), 502, teacher_schedule=Schedule(250, 100, 20, True, seed=0),
        teacher_min_dice=(("tumor", 0.6),), data_augmentation_workers=12, export_processes=4,
        step_overhead_iterations=50,
    ),
    # seconds per step: checks that the harness runs end to end (tests; `--rows multi_teacher` adds the limit-trained
    # teachers)
    "smoke": Profile(
        "smoke", "2d", "cpu", PhantomSettings(in_plane_mm=6.0, slice_mm=10.0, margin_mm=15.0),
        Schedule(1, 2, 1, False, seed=0), 503, cv_folds=1, folds=(0,), rows=("teacher", "student"),
        teacher_schedule=Schedule(2, 2, 1, False, seed=0), test_fraction=0.2, max_cases=5,
        base_features=4, max_features=16, batch_size=2, data_augmentation_workers=0, step_overhead_iterations=0,
        efficiency_cases=0,
    ),
}  # fmt: skip


def with_variants(profile: Profile, specs: list[tuple[str, str, str]] | None) -> Profile:
    """Adds variant rows from (name, row, options as JSON), e.g. ``("hlfd_t1", "hlfd", '{"temperature": 1}')``."""
    # only the multi_teacher row gets its teachers, and the ensemble rows their folds
    student_rows = sorted(set(ROWS) - {"teacher", "multi_teacher", *SINGLE_MODEL_ROWS})
    variants = []
    for name, row, options_json in specs or []:
        taken = {*ROWS, *(v.name for v in variants)}
        if not re.fullmatch(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*", name) or name in taken:
            raise BenchmarkError(
                f"variant name {name!r}: use letters, digits and single underscores, not a row name or another "
                "variant's name (it names the plans copy nnUNetPlans_<name> and the results folder)"
            )
        if row not in student_rows:
            raise BenchmarkError(f"variant {name}: {row!r} is not one of the rows {student_rows}")
        try:
            options = json.loads(options_json)
        except json.JSONDecodeError as error:
            raise BenchmarkError(f"variant {name}: the options are not JSON ({error}): {options_json}") from None
        schedule = _schedule_changes(
            name, profile, options.pop(SCHEDULE_OPTION, {}) if isinstance(options, dict) else {}
        )
        from nnunet_hlfd.trainers import TRAINERS  # nnU-Net's training code: only when a variant is asked for

        trainer = TRAINERS[ROWS[row]]
        valid = set(trainer.option_defaults()) - {"teacher_plans"}
        if not isinstance(options, dict) or not (options or schedule) or set(options) - valid:
            raise BenchmarkError(
                f"variant {name}: options must be a JSON object with keys among {sorted(valid)} (and "
                f'"{SCHEDULE_OPTION}"), got {options_json}'
            )
        try:  # the values too, as the trainer will check them: now, not after hours of teacher training
            trainer.checked_options(options)
        except OptionError as error:
            raise BenchmarkError(f"variant {name} ({trainer.__name__}): {error}") from None
        variants.append(Variant(name, row, tuple(sorted(options.items())), schedule))
    return replace(profile, rows=(*profile.rows, *[v.name for v in variants]), variants=tuple(variants))


def _schedule_changes(name: str, profile: Profile, changes: object) -> tuple[tuple[str, object], ...]:
    """A variant's changes to the rows' schedule, checked as the trainers check a planned schedule."""
    from nnunet_hlfd.trainers.option_checks import check_schedule

    fields = set(asdict(profile.schedule)) - {"seed"}  # one seed for every row: the comparison stays paired
    if not isinstance(changes, dict) or set(changes) - fields:
        raise BenchmarkError(
            f'variant {name}: "{SCHEDULE_OPTION}" must be a JSON object with keys among {sorted(fields)}, got '
            f"{json.dumps(changes)}"
        )
    try:
        check_schedule({**asdict(profile.schedule), **changes}, profile.configuration)
    except OptionError as error:
        raise BenchmarkError(f"variant {name}: {error}") from None
    return tuple(sorted(changes.items()))


def with_tolerances(profile: Profile, tolerances_mm: dict[str | None, float] | None) -> Profile:
    """NSD's tolerances as ``evaluate --tolerance-mm`` parses them; checked against the dataset's labels/regions
    before anything trains."""
    return replace(profile, nsd_tolerances_mm=tuple(tolerances_mm.items())) if tolerances_mm else profile


def with_folds(profile: Profile, folds: list[int] | None) -> Profile:
    """Run a subset of the profile's cross-validation folds (the split stays the profile's)."""
    if not folds:
        return profile
    outside = sorted(set(folds) - set(range(profile.cv_folds)))
    if outside:
        raise BenchmarkError(
            f"folds {outside}: the {profile.name} profile has cross-validation folds {list(range(profile.cv_folds))}"
        )
    return replace(profile, folds=tuple(sorted(set(folds))))


def with_rows(profile: Profile, rows: list[str] | None) -> Profile:
    if not rows:
        return profile
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise BenchmarkError(f"unknown rows {unknown}; choose from {sorted(ROWS)}")
    return replace(profile, rows=tuple(dict.fromkeys([*REFERENCE_ROWS, *rows])))
