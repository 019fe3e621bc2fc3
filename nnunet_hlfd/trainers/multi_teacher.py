"""Multi-teacher KD trainers: ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerMultiTeacher``.

The teachers are, by default, the teacher folds that ``nnunet_hlfd split`` recorded in ``hlfd_splits.json``
(each trained with stock ``nnUNetv2_train`` on its own small subset), and the student trains on the student
fold. Any other mix of folds or subset models of the same dataset and preprocessing can be named with
``nnUNet_hlfd_teachers=PATH:PATH:...`` or the plans option ``"teachers"``. Every teacher is checked like a
single teacher, and the splits are checked for leakage: no teacher may have trained on a case the student
validates on.
"""

import dataclasses
import json
import os
from pathlib import Path

from nnunetv2.paths import nnUNet_preprocessed

from nnunet_hlfd.errors import OptionError, TeacherMismatchError
from nnunet_hlfd.methods.multi_teacher import MultiTeacherConfig, MultiTeacherKD
from nnunet_hlfd.splits import ROLES_FILE, SPLITS_FILE, check_no_leakage
from nnunet_hlfd.teacher import Teacher, TeacherSpec, read_teacher, teacher_spec_from_path
from nnunet_hlfd.teacher.checks import teacher_problems
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation

TEACHERS_ENV = "nnUNet_hlfd_teachers"


def _preprocessed_folder(plans: dict) -> Path:
    return Path(nnUNet_preprocessed.get()) / plans["dataset_name"]


def validated_cases(teacher: Teacher, file_ending: str) -> set[str]:
    """The cases nnU-Net validated the teacher on after its final checkpoint (empty if unknown).

    nnU-Net writes ``fold_X/validation`` after ``checkpoint_final.pth`` and never empties it, so older files are
    left over from an earlier training in the same folder and are not counted.
    """
    folder, final = teacher.spec.fold_folder / "validation", teacher.spec.fold_folder / "checkpoint_final.pth"
    if not folder.is_dir() or not final.is_file():
        return set()
    since = final.stat().st_mtime - 1.0
    return {
        p.name[: -len(file_ending)]
        for p in folder.iterdir()
        if p.name.endswith(file_ending) and p.stat().st_mtime >= since
    }


def check_teachers_do_not_leak(teachers: list[Teacher], plans: dict, dataset_json: dict, student_fold) -> None:
    """Refuse teachers that trained on the student's validation cases, read from the dataset's splits_final.json;
    a teacher whose validation folder disagrees with that file was trained on another split and is refused too."""
    if str(student_fold) == "all":
        return  # nnU-Net's 'all' validates on its own training cases: nothing left to leak into
    splits_file = _preprocessed_folder(plans) / SPLITS_FILE
    if not splits_file.is_file():
        raise OptionError(
            f"{splits_file} does not exist, so it cannot be checked which cases the teachers trained on. Write the "
            "splits with `nnunet_hlfd split` and train the teachers on them."
        )
    folds = json.loads(splits_file.read_text())
    in_all = [t.spec.describe() for t in teachers if t.fold == "all"]
    if in_all:
        raise OptionError(
            f"leaking set-up: teacher(s) {in_all} trained on every case ('all'), the student's validation cases "
            "included. Use teachers trained on folds written by `nnunet_hlfd split`."
        )
    check_no_leakage(folds, [int(t.fold) for t in teachers], int(student_fold))
    for teacher in teachers:
        validated = validated_cases(teacher, dataset_json["file_ending"])
        expected = set(folds[int(teacher.fold)]["val"])
        if validated and validated != expected:
            raise OptionError(
                f"The teacher {teacher.spec.describe()} validated on {len(validated)} case(s) that are not fold "
                f"{teacher.fold}'s validation cases in {splits_file} ({len(expected)} cases): it was trained on "
                "another split, so its training cases are unknown. Retrain it on the current splits."
            )


class nnUNetTrainerMultiTeacher(nnUNetTrainerDistillation):
    """Several limit-trained teachers, mean-combined, into the half-width student (feature + KL + Lovász)."""

    method_class = MultiTeacherKD
    config = MultiTeacherConfig()
    teachers: tuple[str, ...] | None = None  # results model/fold folders or checkpoints; None: hlfd_splits.json

    @classmethod
    def option_defaults(cls) -> dict:
        return {**super().option_defaults(), "teachers": cls.teachers}

    def _requested_teachers(self, fold) -> list[TeacherSpec] | None:
        checkpoint = self.hlfd_options["teacher_checkpoint"]
        if os.environ.get(TEACHERS_ENV):
            paths, where = os.environ[TEACHERS_ENV].split(os.pathsep), f"environment variable {TEACHERS_ENV}"
        elif self.hlfd_options["teachers"]:
            paths = list(self.hlfd_options["teachers"])
            where = '"teachers" in the plans block' if "teachers" in self._options_from_plans else "trainer class"
        else:
            return super()._requested_teachers(fold)
        return [teacher_spec_from_path(path, fold, checkpoint, where) for path in paths if path]

    def _default_teachers(self, plans: dict, configuration: str, fold) -> list[TeacherSpec]:
        roles_file = _preprocessed_folder(plans) / ROLES_FILE
        if not roles_file.is_file():
            raise OptionError(
                f"No teachers given and no {roles_file}: write limit-trained splits with `nnunet_hlfd split "
                f"{plans['dataset_name']} -k K` (it records which folds are the teachers) and train those folds with "
                f"nnUNetv2_train, or name the teachers: {TEACHERS_ENV}=PATH{os.pathsep}PATH... or the plans option "
                '"teachers".'
            )
        roles = json.loads(roles_file.read_text())
        if str(fold) != str(roles["student_fold"]):
            raise OptionError(
                f"Fold {fold} is not the student's fold in {roles_file}: train the student on fold "
                f"{roles['student_fold']} (folds {roles['teacher_folds']} are its teachers)."
            )
        source, layout = f"teacher fold in {roles_file}", super()._default_teachers
        return [dataclasses.replace(layout(plans, configuration, f)[0], source=source) for f in roles["teacher_folds"]]

    def _read_teachers(self, plans: dict, configuration: dict, dataset_json: dict, fold) -> list[Teacher]:
        teachers = [read_teacher(spec) for spec in self.teacher_specs]
        problems = [
            f"{t.spec.describe()}: {problem}"
            for t in teachers
            for problem in teacher_problems(t, plans, configuration, dataset_json, fold, same_fold=False)
        ]
        if problems:
            raise TeacherMismatchError(
                "These teachers cannot teach this student:\n  - "
                + "\n  - ".join(problems)
                + "\nEvery teacher must be trained on the same dataset, labels and preprocessing as the student. "
                "Nothing has been written."
            )
        check_teachers_do_not_leak(teachers, plans, dataset_json, fold)
        return teachers


class nnUNetTrainerMultiTeacher_confidence(nnUNetTrainerMultiTeacher):
    """Multi-teacher KD with per-voxel confidence weighting of the teachers."""

    config = MultiTeacherConfig(combination="confidence")
