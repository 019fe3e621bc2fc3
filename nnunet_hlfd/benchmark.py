"""The KiTS benchmark harness: from a folder of KiTS label maps to a report comparing KD methods.

Steps (each skipped when its result is already there, so an interrupted run continues where it stopped):

1. CT phantoms from the label maps (:mod:`nnunet_hlfd.phantom`), in the KiTS layout;
2. the KiTS converter turns them into an nnU-Net raw dataset;
3. ``nnUNetv2_plan_and_preprocess``; the profile's plan changes (CPU: narrower, smaller batches) and the schedule
   are written into the plans once, before anything trains, so every row shares them;
4. one split for all rows: a seeded held-out test set, and k-fold cross-validation on the rest (the folds are the
   repeats); for multi-teacher KD, two limit-trained teachers per fold on disjoint halves of its training cases;
5. training with ``nnUNetv2_train`` (``--c`` after an interruption): the teacher, then every row, fold by fold;
6. ``nnUNetv2_predict`` of the test set, ``evaluate``, ``compare`` (mean ± std over folds, paired Wilcoxon against
   the student alone, gap recovered), ``efficiency``, the step-overhead benchmark and a qualitative figure;
7. a markdown report.

A time limit splits the run into pieces: no job starts when it would not finish in time, and a training past the
deadline stops after its current epoch (checkpointed), to be resumed by the next piece.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from nnunet_hlfd.evaluation.evaluate import evaluate_folder, read_task, resolve_tolerances
from nnunet_hlfd.evaluation.metrics import DEFAULT_TOLERANCE_MM, SURFACE_DEFINITION
from nnunet_hlfd.files import write_text
from nnunet_hlfd.phantom import PhantomSettings, plot_phantom_samples, write_phantoms
from nnunet_hlfd.trainers import schedules
from nnunet_hlfd.trainers.multi_teacher import TEACHERS_ENV
from nnunet_hlfd.trainers.schedules import (
    INTERRUPTED_EXIT_CODE,
    SCHEDULE_KEY,
    STOP_AFTER_TIME_ENV,
    TEACHER_SCHEDULE_KEY,
)
from nnunet_hlfd.trainers.student import PLANS_BLOCK

# The compared rows: name -> trainer with the benchmark's planned schedule. "teacher" and "student" are the
# references of the comparison (gap recovered = (row − student) / (teacher − student)).
ROWS = {
    "teacher": "nnUNetTrainerHLFDTeacher_bench",
    "student": "nnUNetTrainerStudent_bench",
    "hlfd": "nnUNetTrainerHLFD_bench",
    "hlfd_paper": "nnUNetTrainerHLFD_paper_bench",
    "logit_kd": "nnUNetTrainerLogitKD_bench",
    "at": "nnUNetTrainerAT_bench",
    "cwd": "nnUNetTrainerCWD_bench",
    "skd": "nnUNetTrainerSKD_bench",
    "hlfd_attention_only": "nnUNetTrainerHLFD_attention_only_bench",
    "hlfd_without_feedback": "nnUNetTrainerHLFD_without_feedback_bench",
    "hlfd_layerwise": "nnUNetTrainerHLFD_layerwise_bench",
    "hlfd_individual_feedback": "nnUNetTrainerHLFD_individual_feedback_bench",
    "hlfd_concatenated_feedback": "nnUNetTrainerHLFD_concatenated_feedback_bench",
    "multi_teacher": "nnUNetTrainerMultiTeacher_bench",
    "contrastive": "nnUNetTrainerMultiScaleContrastive_bench",
}
REFERENCE_ROWS = ("teacher", "student")
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
    seed: int | None = None  # every row of fold k starts from seed + k (see trainers.schedules._PlannedSchedule)
    test_time_mirroring: bool | None = None  # in validation and prediction; None: as ``mirroring``

    @property
    def tta(self) -> bool:
        return self.mirroring if self.test_time_mirroring is None else self.test_time_mirroring


@dataclass(frozen=True)
class Variant:
    """An extra row: another row's trainer with other options. The options go into the "hlfd" block of a copy of
    the plans (``nnUNetPlans_<name>``: same preprocessed data, schedule and split), so nothing else differs."""

    name: str
    row: str
    options: tuple[tuple[str, object], ...]

    @property
    def plans(self) -> str:
        return f"{PLANS}_{self.name}"

    @property
    def options_json(self) -> str:
        return json.dumps(dict(self.options))


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
    variants: tuple[Variant, ...] = ()
    # NSD's tolerance: (None, mm) for every label/region, (name, mm) per label/region (``--tolerance-mm``)
    nsd_tolerances_mm: tuple[tuple[str | None, float], ...] = ((None, DEFAULT_TOLERANCE_MM),)

    @property
    def teacher_folds(self) -> tuple[int, ...]:
        """The folds the teacher trains on: every cross-validation fold when its convergence is checked (the check
        judges the teacher's whole cross-validation), else the folds run."""
        return tuple(range(self.cv_folds)) if self.teacher_min_dice else self.folds

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


PROFILES = {
    # the paper's 2D setting on 2 CPU cores: a converged teacher (trained longer, checked before any row), every row
    # with one shorter schedule and the same seed per fold; mirror augmentation in training, none at test time
    "cpu": Profile(
        "cpu", "2d", "cpu", PhantomSettings(in_plane_mm=2.0, slice_mm=4.0),
        Schedule(50, 25, 5, True, seed=0, test_time_mirroring=False), 504,
        rows=("teacher", "student", "hlfd", "hlfd_paper", "cwd", "logit_kd", "at"),
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
    # seconds per step: checks that the harness runs end to end (tests)
    "smoke": Profile(
        "smoke", "2d", "cpu", PhantomSettings(in_plane_mm=6.0, slice_mm=10.0, margin_mm=15.0),
        Schedule(1, 2, 1, False, seed=0), 503, cv_folds=1, folds=(0,), rows=("teacher", "student", "multi_teacher"),
        teacher_schedule=Schedule(2, 2, 1, False, seed=0), test_fraction=0.2, max_cases=5,
        base_features=4, max_features=16, batch_size=2, data_augmentation_workers=0, step_overhead_iterations=0,
    ),
}  # fmt: skip


class BenchmarkError(RuntimeError):
    pass


# ---- splits -------------------------------------------------------------------------------------------------
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
        halves = np.array_split([fold["train"][i] for i in rng.permutation(len(fold["train"]))], HALF_TEACHERS)
        limit_trained += [{"train": sorted(h.tolist()), "val": fold["val"]} for h in halves]
    if any(not fold["train"] for fold in limit_trained):
        raise BenchmarkError(f"{len(development)} development cases are too few for {HALF_TEACHERS} teachers per fold")
    return {"test": test, "folds": cv + limit_trained}


def half_teacher_folds(fold: int, folds: int) -> list[int]:
    return [folds + HALF_TEACHERS * fold + k for k in range(HALF_TEACHERS)]


# ---- jobs ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    kind: str  # train | predict
    row: str
    trainer: str
    fold: int
    plans: str = PLANS

    @property
    def name(self) -> str:
        return f"{self.kind} {self.row} fold {self.fold}"


def planned_jobs(profile: Profile) -> list[Job]:
    """Training jobs (teachers first, then fold by fold every row), then the test-set predictions."""
    rows = [r for r in profile.rows if r != "teacher"]
    jobs = [Job("train", "teacher", TEACHER_TRAINER, f) for f in profile.teacher_folds]
    if "multi_teacher" in rows:
        n = profile.cv_folds
        jobs += [
            Job("train", "limit-trained teacher", TEACHER_TRAINER, t)
            for f in profile.folds
            for t in half_teacher_folds(f, n)
        ]
    jobs += [row_job(profile, "train", row, f) for f in profile.folds for row in rows]
    jobs += [row_job(profile, "predict", row, f) for f in profile.folds for row in profile.rows]
    return jobs


def row_job(profile: Profile, kind: str, row: str, fold: int) -> Job:
    trainer, plans = profile.trainer_and_plans(row)
    return Job(kind, row, trainer, fold, plans)


class Harness:
    def __init__(self, profile: Profile, labels: Path, work: Path, time_limit_min: float | None = None):
        self.profile, self.labels, self.work = profile, Path(labels), Path(work).resolve()
        self.started = time.time()
        self.deadline = self.started + 60 * time_limit_min if time_limit_min is not None else None
        from nnunet_hlfd.demo.pipeline import nnunet_environment

        self.env = nnunet_environment(self.work)
        self.env.update(
            nnUNet_n_proc_DA=str(profile.data_augmentation_workers),
            nnUNet_def_n_proc=str(profile.export_processes),  # nnU-Net's default of 8 spawned workers: slow on 2 cores
        )
        self.durations_file = self.work / "durations.json"
        self.durations = json.loads(self.durations_file.read_text()) if self.durations_file.is_file() else {}
        self.tolerances_mm: dict[str, float] = {}  # NSD's per label/region: resolved once the dataset exists

    # -- helpers
    @property
    def dataset(self) -> str:
        return f"Dataset{self.profile.dataset_id:03d}_KiTSPhantom{self.profile.name.capitalize()}"

    def log(self, message: str) -> None:
        print(f"[{(time.time() - self.started) / 60:6.1f} min] {message}", flush=True)

    def run(self, args: list[str], log_name: str, env: dict | None = None, check: bool = True) -> int:
        log_file = self.work / "logs" / f"{log_name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as log:
            log.write(f"$ {' '.join(args)}\n")
            log.flush()
            code = subprocess.run(args, env=env or self.env, stdout=log, stderr=subprocess.STDOUT).returncode
        if check and code != 0:
            raise BenchmarkError(f"{' '.join(args[:3])} ... failed ({code}); see {log_file}")
        return code

    def model_folder(self, trainer: str, plans: str = PLANS) -> Path:
        return self.work / "nnUNet_results" / self.dataset / f"{trainer}__{plans}__{self.profile.configuration}"

    def predictions(self, row: str, fold: int) -> Path:
        return self.work / "predictions" / row / f"fold_{fold}"

    def time_left(self, needed_s: float) -> bool:
        return self.deadline is None or time.time() + needed_s < self.deadline

    # -- steps
    def prepare(self) -> None:
        profile = self.profile
        phantoms = self.work / "phantoms"
        self.log(f"phantoms from {self.labels} -> {phantoms}")
        cases = write_phantoms(self.labels, phantoms, profile.phantom, profile.max_cases, progress=False)
        raw = self.work / "nnUNet_raw" / self.dataset
        if not (raw / "dataset.json").is_file():
            from nnunet_hlfd.conversion.kits import KITS19, KITS23, convert_kits

            has_cysts = (phantoms / "kits23.json").is_file()  # KiTS23 labels (with cysts) travel with their metadata
            self.log(f"converting {len(cases)} phantoms with the {'KiTS23' if has_cysts else 'KiTS19'} converter")
            (self.work / "nnUNet_raw").mkdir(exist_ok=True)
            convert_kits(
                KITS23 if has_cysts else KITS19, phantoms, "organ_tumor", profile.dataset_id,
                self.dataset.split("_", 1)[1], output_root=self.work / "nnUNet_raw",
            )  # fmt: skip
        dataset_json = json.loads((raw / "dataset.json").read_text())
        self.tolerances_mm = resolve_tolerances(dict(profile.nsd_tolerances_mm), read_task(dataset_json))
        converted = dataset_json["numTraining"]
        if converted != len(cases):
            raise BenchmarkError(f"{raw} holds {converted} cases, the profile {len(cases)}: use a new --work folder")
        preprocessed = self.work / "nnUNet_preprocessed" / self.dataset
        done = preprocessed / "hlfd_benchmark_preprocessed.json"
        if not done.is_file():
            self.log(f"nnUNetv2_plan_and_preprocess -c {profile.configuration}")
            self.run(
                ["nnUNetv2_plan_and_preprocess", "-d", str(profile.dataset_id), "-c", profile.configuration,
                 "-np", "2", "-npfp", "2"], "plan_and_preprocess",
                dict(self.env, nnUNet_n_proc_DA="1"),  # the planner sets torch's threads to it: 0 fails
            )  # fmt: skip
            write_text(done, json.dumps({"configuration": profile.configuration}))
        self.fix_plans(preprocessed / f"{PLANS}.json")
        for variant in profile.variants:
            self.write_variant_plans(preprocessed, variant)
        self.write_splits(preprocessed, cases)

    def fix_plans(self, plans_file: Path) -> None:
        """The profile's plan changes and schedules, written once; refused if they changed since."""
        profile, plans = self.profile, json.loads(plans_file.read_text())
        configuration = plans["configurations"][profile.configuration]
        wanted = profile.schedules
        if SCHEDULE_KEY in configuration:
            written = {key: configuration[key] for key in (SCHEDULE_KEY, TEACHER_SCHEDULE_KEY) if key in configuration}
            if written != wanted:
                raise BenchmarkError(
                    f"{plans_file} holds the schedules {written}, the profile now asks for {wanted}: models already "
                    "trained used the old ones. Use a new --work folder."
                )
            return
        kwargs = configuration["architecture"]["arch_kwargs"]
        if profile.base_features:
            n = kwargs["n_stages"]
            kwargs["features_per_stage"] = [min(profile.base_features * 2**i, profile.max_features) for i in range(n)]
        if profile.batch_size:
            configuration["batch_size"] = profile.batch_size
        configuration.update(wanted)
        write_text(plans_file, json.dumps(plans, indent=2))

    def write_variant_plans(self, preprocessed: Path, variant: Variant) -> None:
        """The plans copy of a variant, written once; refused if its options changed since."""
        plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
        configuration = plans["configurations"][self.profile.configuration]
        # the teacher stays the benchmark's, found under the original plans
        block = {**configuration.get(PLANS_BLOCK, {}), **dict(variant.options), "teacher_plans": PLANS}
        target = preprocessed / f"{variant.plans}.json"
        if target.is_file():
            written = json.loads(target.read_text())["configurations"][self.profile.configuration].get(PLANS_BLOCK)
            if written != block:
                raise BenchmarkError(
                    f"{target} holds the options {written}, the variant {variant.name} now asks for {block}: models "
                    "already trained used the old ones. Give the variant a new name."
                )
            return
        configuration[PLANS_BLOCK] = block
        plans["plans_name"] = variant.plans
        write_text(target, json.dumps(plans, indent=2))

    def write_splits(self, preprocessed: Path, cases: list[str]) -> None:
        splits = benchmark_splits(cases, self.profile.cv_folds, self.profile.test_fraction)
        target, test_file = preprocessed / "splits_final.json", self.work / "test_cases.json"
        if target.is_file():
            if json.loads(target.read_text()) != splits["folds"]:
                raise BenchmarkError(f"{target} differs from the benchmark's split: use a new --work folder")
        else:
            write_text(target, json.dumps(splits["folds"], indent=2))
        write_text(test_file, json.dumps(splits["test"], indent=2))
        raw = self.work / "nnUNet_raw" / self.dataset
        for case in splits["test"]:  # the test set as nnUNetv2_predict and evaluate read it
            for source, folder in ((raw / "imagesTr" / f"{case}_0000.nii.gz", "images"),
                                   (raw / "labelsTr" / f"{case}.nii.gz", "labels")):  # fmt: skip
                destination = self.work / "test" / folder / source.name
                if not destination.is_file():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, destination)

    def result_file(self, job: Job) -> Path:
        """What a finished job leaves: the final checkpoint, or the evaluation of the test-set predictions."""
        if job.kind == "train":
            return self.model_folder(job.trainer, job.plans) / f"fold_{job.fold}" / "checkpoint_final.pth"
        return self.predictions(job.row, job.fold) / "metrics_summary.json"

    def train(self, job: Job) -> bool:
        """Train (or resume) one model; False when it stopped at the deadline."""
        fold_folder = self.result_file(job).parent
        env = dict(self.env)
        if self.deadline is not None:
            env[STOP_AFTER_TIME_ENV] = str(self.deadline - self.durations.get("epoch", 0.0))
        if job.row == "multi_teacher":
            teachers = [
                self.model_folder(TEACHER_TRAINER) / f"fold_{t}"
                for t in half_teacher_folds(job.fold, self.profile.cv_folds)
            ]
            env[TEACHERS_ENV] = os.pathsep.join(map(str, teachers))
        args = ["nnUNetv2_train", str(self.profile.dataset_id), self.profile.configuration, str(job.fold), "-tr",
                job.trainer, "-p", job.plans, "-device", self.profile.device]  # fmt: skip
        if (fold_folder / "checkpoint_latest.pth").is_file():
            args.append("--c")
        code = self.run(args, f"train_{job.trainer}_{job.plans}_fold{job.fold}", env, check=False)
        if code == INTERRUPTED_EXIT_CODE:
            return False
        if code != 0:
            raise BenchmarkError(f"{job.name} failed ({code}); see {self.work / 'logs'}")
        return True

    def evaluate(self, job: Job) -> None:
        test_labels = self.work / "test" / "labels"
        evaluate_folder(
            self.predictions(job.row, job.fold), test_labels, tolerance_mm=self.tolerances_mm, progress=False
        )

    def evaluation_is_current(self, job: Job) -> bool:
        """Was a finished job's test set evaluated with today's surface metrics and tolerances? (Else it is
        evaluated again; the predictions stay.)"""
        summary = json.loads(self.result_file(job).read_text())
        return (
            summary.get("surface_metrics") == SURFACE_DEFINITION
            and summary.get("nsd_tolerance_mm") == self.tolerances_mm
        )

    def predict(self, job: Job) -> None:
        output = self.predictions(job.row, job.fold)
        args = ["nnUNetv2_predict", "-i", str(self.work / "test" / "images"), "-o", str(output), "-d",
                str(self.profile.dataset_id), "-c", self.profile.configuration, "-f", str(job.fold), "-tr", job.trainer,
                "-p", job.plans, "-device", self.profile.device, "--continue_prediction"]  # fmt: skip
        if not self.profile.schedule.tta:
            args.append("--disable_tta")
        if self.profile.device == "cpu":
            args += ["-npp", "1", "-nps", "1"]
        self.run(args, f"predict_{job.row}_fold{job.fold}")
        self.evaluate(job)

    def run_jobs(self) -> bool:
        """Every pending job; False if the time limit stopped the run before the end."""
        jobs = planned_jobs(self.profile)
        teacher_checked = False
        for i, job in enumerate(jobs, 1):
            if self.result_file(job).is_file():
                if job.kind == "predict" and not self.evaluation_is_current(job):
                    self.log(f"{job.name}: evaluating the test predictions again (new surface metrics or tolerances)")
                    self.evaluate(job)
                continue
            if not teacher_checked and job.row not in TEACHER_ROWS:
                self.check_teacher()  # every teacher has trained: is it worth distilling?
                teacher_checked = True
            # a training stops at the deadline after its current epoch: it needs room for one epoch (and start-up)
            estimate = (
                2 * self.durations.get("epoch", 0.0) if job.kind == "train" else self.durations.get(job.kind, 0.0)
            )
            if not self.time_left(estimate):
                self.log(f"time limit: no room for {job.name} (about {estimate / 60:.1f} min); stopping here")
                return False
            self.log(f"[{i}/{len(jobs)}] {job.name} ({job.trainer})")
            start = time.time()
            if job.kind == "train":
                if not self.train(job):
                    self.log("time limit reached during training; the next run resumes it with --c")
                    return False
                self._record_duration(job.kind, time.time() - start)
                self._record_epoch(job)
            else:
                self.predict(job)
                self._record_duration(job.kind, time.time() - start)
        return True

    def _record_duration(self, kind: str, seconds: float) -> None:
        self.durations[kind] = max(self.durations.get(kind, 0.0), seconds)
        write_text(self.durations_file, json.dumps(self.durations, indent=2))

    def _record_epoch(self, job: Job) -> None:
        import torch

        timestamps = torch.load(self.result_file(job), map_location="cpu", weights_only=False)["logging"]
        epochs = [e - s for s, e in zip(timestamps["epoch_start_timestamps"], timestamps["epoch_end_timestamps"])]
        if epochs:
            self._record_duration("epoch", float(max(epochs)))

    def label_names(self) -> dict[str, str]:
        """Label/region value (as nnU-Net's summary.json keys it) -> name, background left out."""
        labels = json.loads((self.work / "nnUNet_raw" / self.dataset / "dataset.json").read_text())["labels"]
        return {str(v): k for k, v in labels.items() if v != 0}

    def validation_dice(self, row: str, folds: tuple[int, ...] | None = None) -> dict[str, np.ndarray] | None:
        """nnU-Net's final validation Dice of a row per label/region name, one value per fold (default: the folds
        run); None until every fold has its ``validation/summary.json``."""
        summaries = [
            self.result_file(row_job(self.profile, "train", row, f)).parent / "validation" / "summary.json"
            for f in (folds or self.profile.folds)
        ]
        if not all(s.is_file() for s in summaries):
            return None
        means = [json.loads(s.read_text())["mean"] for s in summaries]
        return {name: np.array([m[label]["Dice"] for m in means]) for label, name in self.label_names().items()}

    def check_teacher(self) -> None:
        """Refuse to distil a teacher below the profile's cross-validation Dice: a teacher that misses half the
        tumour teaches the student to miss it, and the comparison would say nothing about a converged one."""
        if not self.profile.teacher_min_dice:
            return
        folds = self.profile.teacher_folds
        dice = self.validation_dice("teacher", folds)
        if dice is None:
            raise BenchmarkError("the teacher's validation summaries are missing: train the teacher folds first")
        found = ", ".join(f"{name} {v.mean():.3f} ({' '.join(f'{x:.3f}' for x in v)})" for name, v in dice.items())
        short = [f"{name} {dice[name].mean():.3f} < {minimum}" for name, minimum in self.profile.teacher_min_dice
                 if dice[name].mean() < minimum]  # fmt: skip
        if short:
            raise BenchmarkError(
                f"the teacher is not converged: cross-validation Dice {'; '.join(short)} (folds "
                f"{list(folds)}: {found}). Distilling it would measure how a student copies a weak "
                "teacher. Lengthen the teacher schedule or raise the phantom resolution, in a new --work folder."
            )
        self.log(f"teacher cross-validation Dice: {found}")

    # -- report
    def cross_validation(self) -> str:
        """nnU-Net's own validation Dice of every row on its fold's validation cases: what a configuration may be
        chosen on, leaving the test set to the comparison."""
        names = self.label_names()
        folds = self.profile.folds
        lines = [
            "| run | " + " | ".join(f"{n} Dice" for n in names.values()) + " | "
            + " | ".join(f"{n} Δ vs student per fold" for n in names.values()) + " |",
            "|---|" + "---|" * 2 * len(names),
        ]  # fmt: skip
        dice = {row: d for row in self.profile.rows if (d := self.validation_dice(row)) is not None}
        for row, values in dice.items():
            cells = [f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}" for v in values.values()]
            if "student" in dice and row != "student":
                cells += [" ".join(f"{d:+.3f}" for d in values[n] - dice["student"][n]) for n in names.values()]
            else:
                cells += [""] * len(names)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append(
            f"\nmean ± sample std over folds {list(folds)} of nnU-Net's final validation (`fold_X/validation/"
            "summary.json`, each fold's own validation cases, no test case)."
        )
        return "\n".join(lines)

    def training_curves(self, onset: float = 0.05) -> str:
        """When each row learns each structure: nnU-Net's per-epoch pseudo-Dice (its validation iterations), mean
        over the folds of a window of a tenth of the epochs around each quarter of the schedule, and the first
        epoch at which the pseudo-Dice reaches ``onset``, per fold. A flat last column means the schedule was long
        enough for that row."""
        names = list(self.label_names().values())
        quarters = (0.25, 0.5, 0.75, 1.0)
        header = [f"{n} {int(q * 100)} %" for n in names for q in quarters] + [
            f"{n} ≥ {onset}, per fold" for n in names
        ]
        lines = ["| run | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for row in self.profile.rows:
            files = [self.result_file(row_job(self.profile, "train", row, f)) for f in self.profile.folds]
            if not all(f.is_file() for f in files):
                continue
            curves = [_pseudo_dice(f) for f in files]  # (epochs, labels) per fold
            cells = []
            for k in range(len(names)):
                for q in quarters:
                    values = []
                    for curve in curves:
                        width = max(1, len(curve) // 10)
                        end = max(width, round(q * len(curve)))
                        values.append(curve[end - width : end, k].mean())
                    cells.append(f"{np.mean(values):.3f}")
            for k in range(len(names)):
                first = [next((str(e) for e, v in enumerate(c[:, k]) if v >= onset), "—") for c in curves]
                cells.append("/".join(first))
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append(
            "\nnnU-Net's pseudo-Dice per epoch (foreground-oversampled validation patches, not whole cases), from "
            "`checkpoint_final.pth`: the mean over folds of the last tenth of the epochs up to 25/50/75/100 % of each "
            f"row's schedule, and the first epoch (from 0) reaching {onset} per fold (— never)."
        )
        return "\n".join(lines)

    def report(self, output: Path | None = None) -> Path:
        from nnunet_hlfd.evaluation.compare import compare_runs, format_markdown, load_run, write_comparison
        from nnunet_hlfd.evaluation.figures import plot_case_contours

        profile, folder = self.profile, self.work / "report"
        folder.mkdir(parents=True, exist_ok=True)
        runs = [load_run(row, [self.predictions(row, f) for f in profile.folds]) for row in profile.rows]
        rows = compare_runs(runs, "student", "teacher")
        comparison = format_markdown(rows, "student", "teacher", runs[0].tolerances_mm)
        write_comparison(rows, comparison, folder)
        summary = {
            "profile": profile.name,
            "folds": list(profile.folds),
            "test": dice_summary(rows),
            "cross_validation_dice": {
                row: {name: [float(x) for x in values] for name, values in dice.items()}
                for row in profile.rows
                if (dice := self.validation_dice(row)) is not None
            },
        }
        write_text(folder / "summary.json", json.dumps(summary, indent=2))

        efficiency = self._measured_once("efficiency.md", self._efficiency)
        step_overhead = self._measured_once("step_overhead.md", self._step_overhead)

        test_cases = json.loads((self.work / "test_cases.json").read_text())
        plot_phantom_samples(self.work / "phantoms", test_cases[:4], folder / "phantom_samples.png")
        shown = [r for r in ("teacher", "student", "hlfd") if r in profile.rows]
        figures = plot_case_contours(
            self.work / "test" / "images", self.work / "test" / "labels",
            {r: self.predictions(r, profile.folds[0]) for r in shown}, folder / "cases", cases=test_cases[:1],
        )  # fmt: skip
        markdown = self._markdown(
            comparison,
            self.cross_validation() + "\n\n" + self.training_curves(),
            efficiency,
            step_overhead,
            [folder / "phantom_samples.png", *figures],
        )
        target = Path(output) if output else folder / "benchmark_report.md"
        write_text(target, markdown)
        return target

    def _measured_once(self, name: str, measure: Callable[[], str]) -> str:
        """Measurements that do not depend on the rows: kept in WORK/report, a continued run does not repeat them."""
        cached = self.work / "report" / name
        if not cached.is_file():
            write_text(cached, measure())
        return cached.read_text()

    def _efficiency(self) -> str:
        from nnunet_hlfd.evaluation.efficiency import format_markdown, hardware, measure_efficiency

        self.log("efficiency of the teacher and the student")
        models = {"teacher": self.model_folder(TEACHER_TRAINER), "student": self.model_folder(ROWS["student"])}
        devices = [self.profile.device]
        measured = measure_efficiency(models, devices, self.profile.folds[0], images=self.work / "test" / "images",
                                      num_cases=2, progress=False)  # fmt: skip
        return format_markdown(measured, 3, hardware(devices))

    def _step_overhead(self) -> str:
        profile = self.profile
        script = Path(__file__).resolve().parents[1] / "benchmarks" / "step_overhead.py"
        if not script.is_file():
            return "(benchmarks/step_overhead.py not found beside the package: not measured)"
        if not profile.step_overhead_iterations:
            return f"Not measured in the `{profile.name}` profile."
        self.log("step-overhead benchmark")
        plan = "2d" if profile.configuration == "2d" else "3d"
        result = subprocess.run(
            [sys.executable, str(script), "--device", profile.device, "--plans", plan, "--iterations",
             str(profile.step_overhead_iterations), "--warmup", "1"], capture_output=True, text=True, check=True,
        )  # fmt: skip
        return result.stdout.strip()

    def _markdown(
        self, comparison: str, cross_validation: str, efficiency: str, step_overhead: str, figures: list[Path]
    ) -> str:
        from nnunet_hlfd.evaluation.efficiency import hardware

        profile = self.profile
        splits = json.loads((self.work / "nnUNet_preprocessed" / self.dataset / "splits_final.json").read_text())
        test = json.loads((self.work / "test_cases.json").read_text())
        development = len(splits[0]["train"]) + len(splits[0]["val"])
        versions = ", ".join(f"{p} {_version(p)}" for p in ("nnunet_hlfd", "nnunetv2", "torch", "monai"))
        versions += f", Python {platform.python_version()}"
        lines = [
            f"# KiTS phantom benchmark, profile `{profile.name}`",
            "",
            f"Command: `{self.command()}`",
            "",
            f"Hardware: {hardware([profile.device])}. Versions: {versions}.",
            "",
            f"Data: {len(test) + development} phantoms from the real label maps in `{self.labels}` "
            f"({asdict(profile.phantom)}); {len(test)} held-out test cases; {profile.cv_folds}-fold "
            f"cross-validation on the other {development}, folds {list(profile.folds)} run (the folds are the "
            "repeats: mean ± std over folds). "
            f"Configuration `{profile.configuration}`; plan changes: {self._plan_changes()}; schedule "
            f"{self._schedule_description()}."
            + (
                f" Multi-teacher KD: {HALF_TEACHERS} limit-trained teachers per fold, each on a disjoint half of "
                "the fold's training cases."
                if "multi_teacher" in profile.rows
                else ""
            ),
            "",
            "## Test-set comparison",
            "",
            comparison,
            "",
            "## Cross-validation (each fold's validation cases)",
            "",
            cross_validation,
            "",
            *self._variant_lines(),
            "## Efficiency (teacher and student, test cases)",
            "",
            efficiency,
            "",
            "## Step overhead",
            "",
            step_overhead,
            "",
            "## Figures",
            "",
            *[f"![{p.stem}]({p.relative_to(self.work / 'report')})" for p in figures],
            "",
        ]
        return "\n".join(lines)

    def command(self) -> str:
        """The command that reproduces this report (rows and variants included)."""
        profile = self.profile
        words = ["python benchmarks/kits_benchmark.py", str(self.labels), "--profile", profile.name, "--work",
                 str(self.work)]  # fmt: skip
        variants = [v.name for v in profile.variants]
        rows = [r for r in profile.rows if r not in variants]
        if rows != list(PROFILES[profile.name].rows):
            words += ["--rows", *[r for r in rows if r not in REFERENCE_ROWS]]
        if profile.folds != PROFILES[profile.name].folds:
            words += ["--folds", *map(str, profile.folds)]
        for v in profile.variants:
            words += ["--variant", v.name, v.row, f"'{v.options_json}'"]
        if profile.nsd_tolerances_mm != PROFILES[profile.name].nsd_tolerances_mm:
            words += ["--tolerance-mm", *(f"{k}={mm!r}" if k else f"{mm!r}" for k, mm in profile.nsd_tolerances_mm)]
        return " ".join(words)

    def _variant_lines(self) -> list[str]:
        variants = [
            f"- `{v.name}`: the `{v.row}` trainer with {v.options_json} (plans `{v.plans}`)"
            for v in self.profile.variants
        ]
        return ["Variants:", "", *variants, ""] if variants else []

    def _schedule_description(self) -> str:
        p = self.profile
        rows = f"{asdict(p.schedule)} for every row"
        if p.teacher_schedule is None:
            return f"{rows} and the teacher"
        minimum = ", ".join(f"{name} ≥ {dice}" for name, dice in p.teacher_min_dice)
        teacher = f"the teacher {asdict(p.teacher_schedule)}"
        return f"{rows}, {teacher}" + (f" (its cross-validation Dice checked first: {minimum})" if minimum else "")

    def _plan_changes(self) -> str:
        p = self.profile
        if not p.base_features and not p.batch_size:
            return "none (nnU-Net's plans)"
        return f"features per stage min({p.base_features}·2^i, {p.max_features}), batch size {p.batch_size}"

    def __call__(self, report: Path | None = None) -> Path | None:
        self.work.mkdir(parents=True, exist_ok=True)
        write_text(
            self.work / "profile.json",
            json.dumps({**asdict(self.profile), "labels": str(self.labels)}, indent=2, default=str),
        )
        self.prepare()
        if not self.run_jobs():
            return None
        self.log("report")
        target = self.report(report)
        self.log(f"done: {target}")
        return target


def _pseudo_dice(checkpoint: Path) -> np.ndarray:
    """(epochs, labels/regions) pseudo-Dice that nnU-Net logged during training."""
    import torch

    logging = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    return np.array(logging["dice_per_class_or_region"], dtype=np.float64)


def dice_summary(rows: list[dict]) -> dict:
    """Per run and label/region, the test-set Dice of a comparison: mean and std over the folds, Δ against the
    student alone with its paired Wilcoxon p and number of pairs, and the gap recovered (or why it is not shown)."""
    keys = ("mean", "std", "repeats", "cases", "delta_vs_baseline", "p_value", "paired_cases")
    keys += ("gap_recovered", "gap_withheld")
    summary: dict = {}
    for row in rows:
        if row["metric"] == "Dice":
            summary.setdefault(row["run"], {})[row["class"]] = {key: row.get(key) for key in keys}
    return summary


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def with_variants(profile: Profile, specs: list[tuple[str, str, str]] | None) -> Profile:
    """Adds variant rows from (name, row, options as JSON), e.g. ``("hlfd_t1", "hlfd", '{"temperature": 1}')``."""
    student_rows = sorted(set(ROWS) - {"teacher", "multi_teacher"})  # only the multi_teacher row gets its teachers
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
        valid = set(getattr(schedules, ROWS[row]).option_defaults()) - {"teacher_plans"}
        if not isinstance(options, dict) or not options or set(options) - valid:
            raise BenchmarkError(
                f"variant {name}: options must be a JSON object with keys among {sorted(valid)}, got {options_json}"
            )
        variants.append(Variant(name, row, tuple(sorted(options.items()))))
    return replace(profile, rows=(*profile.rows, *[v.name for v in variants]), variants=tuple(variants))


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
