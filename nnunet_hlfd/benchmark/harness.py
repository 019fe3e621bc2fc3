"""The benchmark's runner: every pending job in order (the teachers, then fold by fold every row, then the test-set
predictions), each skipped when its result is there, within a time limit; the teacher's convergence checked before
any student trains; then the report."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from nnunet_hlfd.benchmark.jobs import Job, half_teacher_folds, planned_jobs
from nnunet_hlfd.benchmark.phantom import check_label_source
from nnunet_hlfd.benchmark.profiles import ALL_FOLDS, FOLD_ALL, TEACHER_ROWS, TEACHER_TRAINER, Profile
from nnunet_hlfd.benchmark.report import Report
from nnunet_hlfd.benchmark.workspace import Workspace, epoch_durations
from nnunet_hlfd.errors import BenchmarkError
from nnunet_hlfd.evaluation.evaluate import evaluate_folder
from nnunet_hlfd.evaluation.metrics import SURFACE_DEFINITION
from nnunet_hlfd.files import write_text
from nnunet_hlfd.runtime import INTERRUPTED_EXIT_CODE, STOP_AFTER_TIME_ENV, TEACHERS_ENV, nnunet_command


class Harness(Workspace):
    """Runs a profile in its workspace: ``Harness(profile, labels, work, time_limit_min)(report)`` returns the
    report's path, or None when the time limit stopped it (run it again to continue)."""

    def __init__(self, profile: Profile, labels: Path, work: Path, time_limit_min: float | None = None):
        if time_limit_min is not None and not time_limit_min > 0:  # `not >` refuses NaN too
            raise BenchmarkError(
                f"--time-limit-min {time_limit_min:g}: give a positive number of minutes for this piece of the run "
                "(or leave it out to run to the end)"
            )
        super().__init__(profile, labels, work)
        self.time_limit_min = time_limit_min
        self.stopped_because: str | None = None  # why the last run_jobs stopped at the time limit
        self.deadline = self.started + 60 * time_limit_min if time_limit_min is not None else None
        self.durations_file = self.work / "durations.json"
        self.durations = json.loads(self.durations_file.read_text()) if self.durations_file.is_file() else {}

    def time_left(self, needed_s: float) -> bool:
        return self.deadline is None or time.time() + needed_s < self.deadline

    def train(self, job: Job) -> bool:
        """Train (or resume) one model; False when it stopped at the deadline."""
        fold_folder = self.result_file(job).parent
        env = dict(self.env)
        if self.deadline is not None:
            env[STOP_AFTER_TIME_ENV] = str(self.deadline - self.durations.get("epoch", 0.0))
        teacher_folds = (
            half_teacher_folds(job.fold, self.profile.cv_folds) if job.row == "multi_teacher"
            # the fold ensemble: the teacher's cross-validation folds, not the limit-trained ones beside them
            else range(self.profile.cv_folds) if job.fold == FOLD_ALL
            else None
        )  # fmt: skip
        if teacher_folds is not None:
            teachers = [self.model_folder(TEACHER_TRAINER) / f"fold_{t}" for t in teacher_folds]
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
        folds = [str(f) for f in range(self.profile.cv_folds)] if job.fold == ALL_FOLDS else [str(job.fold)]
        args = ["nnUNetv2_predict", "-i", str(self.work / "test" / "images"), "-o", str(output), "-d",
                str(self.profile.dataset_id), "-c", self.profile.configuration, "-f", *folds, "-tr", job.trainer,
                "-p", job.plans, "-device", self.profile.device, "--continue_prediction"]  # fmt: skip
        if not self.profile.schedule.tta:
            args.append("--disable_tta")
        if self.profile.device == "cpu":
            args += ["-npp", "0", "-nps", "0"]  # nnU-Net's sequential prediction: no worker processes to start
        self.run(args, f"predict_{job.row}_fold{job.fold}")
        self.evaluate(job)

    def run_jobs(self) -> bool:
        """Every pending job; False if the time limit stopped the run before the end."""
        jobs = planned_jobs(self.profile)
        teacher_checked = started_any = False
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
                self.stopped_because = self._no_room(job, estimate, started_any)
                self.log(f"time limit: {self.stopped_because}")
                return False
            started_any = True
            self.log(f"[{i}/{len(jobs)}] {job.name} ({job.trainer})")
            start = time.time()
            if job.kind == "train":
                if not self.train(job):
                    self.stopped_because = (
                        f"the limit was reached during {job.name}: run the same command again to continue (it "
                        "resumes with --c)"
                    )
                    self.log(f"time limit: {self.stopped_because}")
                    return False
                self._record_duration(job.kind, time.time() - start)
                self._record_epoch(job)
            else:
                self.predict(job)
                self._record_duration(job.kind, time.time() - start)
        return True

    def _no_room(self, job: Job, estimate_s: float, started_any: bool) -> str:
        """Why no further job fits, and, when none could start in this piece, the limit that lets one start: run
        again with the same limit and it would stop here again."""
        if started_any:
            return (
                f"no room for {job.name} (about {estimate_s / 60:.1f} min) before the limit: run the same command "
                "again to continue"
            )
        spent_min = (time.time() - self.started) / 60
        needed = f"about {estimate_s / 60:.1f} min more" if estimate_s else "not measured yet"
        return (
            f"the limit of {self.time_limit_min:g} min left no room for {job.name} ({needed}) after "
            f"{spent_min:.1f} min of start-up and preparation: run again with --time-limit-min above "
            f"{spent_min + estimate_s / 60 + 1:.0f} (what was prepared is kept)"
        )

    def _record_duration(self, kind: str, seconds: float) -> None:
        self.durations[kind] = max(self.durations.get(kind, 0.0), seconds)
        write_text(self.durations_file, json.dumps(self.durations, indent=2))

    def _record_epoch(self, job: Job) -> None:
        epochs = epoch_durations(self.result_file(job))
        if epochs:
            self._record_duration("epoch", float(max(epochs)))

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

    def __call__(self, report: Path | None = None) -> Path | None:
        # refusals of the labels (missing, not whole, another source than this work folder's) before any write
        check_label_source(self.labels, self.phantoms, self.profile.phantom, self.profile.max_cases)
        for command in ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict"):
            nnunet_command(command)  # installed beside this Python or on PATH, or refused now
        self.work.mkdir(parents=True, exist_ok=True)
        write_text(
            self.work / "profile.json",
            json.dumps({**asdict(self.profile), "labels": str(self.labels)}, indent=2, default=str),
        )
        self.prepare()
        if not self.run_jobs():
            return None
        self.log("report")
        target = Report(self).write(report)
        self.log(f"done: {target}")
        return target
