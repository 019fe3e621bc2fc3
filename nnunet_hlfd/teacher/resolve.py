"""Which teacher(s) a student learns from, in one order for one or many teachers:

1. resuming (``--c``): the teacher(s) recorded beside the student, found again by sha256 if they moved;
2. requested: the environment (``nnUNet_hlfd_teacher``; for several, ``nnUNet_hlfd_teachers``), then the plans
   block or the trainer class (``teacher``; for several, ``teachers``);
3. the default: nnU-Net's results layout (the teacher trainer's model of the same plans, configuration and fold),
   for several teachers the teacher folds that ``nnunet_hlfd split`` recorded, and for a student of the fold
   ensemble (``-f all``) every trained cross-validation fold of that teacher model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import replace
from pathlib import Path

from nnunetv2.paths import nnUNet_results

from nnunet_hlfd.errors import OptionError, TeacherNotFoundError
from nnunet_hlfd.files import file_sha256
from nnunet_hlfd.runtime import PLANS_BLOCK, TEACHER_ENV, TEACHERS_ENV, model_folder, preprocessed_folder
from nnunet_hlfd.splits import ROLES_FILE
from nnunet_hlfd.teacher.locate import TeacherSpec, teacher_spec_from_path


def same_checkpoints(specs: list[TeacherSpec], sha256s: list[str | None]) -> bool:
    """Are these the recorded checkpoints (byte for byte), wherever they lie now?"""
    return len(specs) == len(sha256s) and all(
        sha is not None and spec.checkpoint_path.is_file() and file_sha256(spec.checkpoint_path) == sha
        for spec, sha in zip(specs, sha256s)
    )


def requested_teachers(options: dict, from_plans: set[str], fold, many: bool) -> list[TeacherSpec] | None:
    """The teacher(s) the user named (environment, plans block or trainer class), or None for the default.
    ``many``: a multi-teacher student, which also reads ``nnUNet_hlfd_teachers`` and the option ``teachers``."""
    checkpoint = options["teacher_checkpoint"]
    if many and os.environ.get(TEACHERS_ENV):
        paths, where = os.environ[TEACHERS_ENV].split(os.pathsep), f"environment variable {TEACHERS_ENV}"
        return [teacher_spec_from_path(path, fold, checkpoint, where) for path in paths if path]
    if many and options.get("teachers"):
        where = '"teachers" in the plans block' if "teachers" in from_plans else "trainer class"
        return [teacher_spec_from_path(path, fold, checkpoint, where) for path in options["teachers"] if path]
    if os.environ.get(TEACHER_ENV):
        where = f"environment variable {TEACHER_ENV}"
        return [teacher_spec_from_path(os.environ[TEACHER_ENV], fold, checkpoint, where)]
    if options["teacher"]:
        where = f'plans block "{PLANS_BLOCK}"' if "teacher" in from_plans else "trainer class"
        return [teacher_spec_from_path(options["teacher"], fold, checkpoint, where)]
    return None


def default_teacher(plans: dict, configuration: str, fold, options: dict) -> TeacherSpec:
    """nnU-Net's results layout: the teacher trainer's model of the same plans, configuration and fold."""
    folder = model_folder(
        nnUNet_results.get(),
        plans["dataset_name"],
        options["teacher_trainer"],
        options["teacher_plans"] or plans["plans_name"],
        options["teacher_configuration"] or configuration,
    )
    return TeacherSpec(str(folder), str(fold), options["teacher_checkpoint"], "default")


def split_teachers(plans: dict, configuration: str, fold, options: dict) -> list[TeacherSpec]:
    """The teacher folds ``nnunet_hlfd split`` recorded for the student's fold, in nnU-Net's results layout."""
    roles_file = preprocessed_folder(plans["dataset_name"]) / ROLES_FILE
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
    source = f"teacher fold in {roles_file}"
    return [replace(default_teacher(plans, configuration, f, options), source=source) for f in roles["teacher_folds"]]


def fold_ensemble_teachers(plans: dict, configuration: str, fold, options: dict) -> list[TeacherSpec]:
    """Every trained fold of the teacher model (nnU-Net's results layout): the ensemble ``nnUNetv2_predict -f 0 1 2
    3 4`` predicts with, distilled into one student trained on every case (``-f all``)."""
    if str(fold) != "all":
        raise OptionError(
            f"A student of the fold ensemble trains on every case: run it with fold 'all', not {fold} (the teacher "
            f"folds have trained on fold {fold}'s validation cases, so its validation would be leaked)."
        )
    template = default_teacher(plans, configuration, fold, options)
    folder = Path(template.model_folder)
    checkpoint = options["teacher_checkpoint"]
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folds = []
    if folder.is_dir():  # the folds nnUNetv2_predict ensembles when given none: finished, 'all' left out
        with contextlib.redirect_stdout(io.StringIO()):  # it narrates its search
            folds = [str(f) for f in sorted(nnUNetPredictor.auto_detect_available_folds(str(folder), checkpoint))]
    if len(folds) < 2:
        raise OptionError(
            f"The fold ensemble needs at least two trained teacher folds in {folder} (found {folds or 'none'} with "
            f"{checkpoint}): train them with nnUNetv2_train DATASET {configuration} FOLD -tr "
            f"{options['teacher_trainer']}, or name the teachers with {TEACHERS_ENV}=PATH{os.pathsep}PATH..."
        )
    source = f"fold ensemble of {folder}"
    return [replace(template, fold=f, source=source) for f in folds]


def recorded_teachers(record_file: Path, requested: list[TeacherSpec] | None) -> list[TeacherSpec]:
    """The teacher(s) recorded when this student started. A requested teacher elsewhere is accepted when its
    checkpoint is the recorded one byte for byte (moved or remounted), refused otherwise."""
    entries = json.loads(record_file.read_text())
    entries = entries.get("teachers", [entries])
    recorded = [TeacherSpec(**{**e["spec"], "source": f"recorded in {record_file}"}) for e in entries]
    paths = [spec.checkpoint_path for spec in recorded]
    hashes = [e.get("teacher", {}).get("sha256") for e in entries]
    if requested is not None and [spec.checkpoint_path for spec in requested] != paths:
        if same_checkpoints(requested, hashes):  # the recorded teacher, moved or remounted
            return [
                replace(spec, source=f"{spec.source}; the same checkpoint as recorded at {path}, moved")
                for spec, path in zip(requested, paths)
            ]
        raise OptionError(
            f"This run was started with the teacher(s) {', '.join(map(str, paths))}, but "
            f"{', '.join(spec.describe() for spec in requested)} is requested now, and its checkpoint is "
            "another one (its sha256 differs from the recorded one). Resume with the recorded teacher(s) "
            "(unset the environment variable or plans option), or train into a new results folder."
        )
    gone = [path for path in paths if not path.is_file()]
    if gone:
        raise TeacherNotFoundError(
            f"The teacher recorded for this run is gone: {', '.join(map(str, gone))} (moved, or its disk "
            f"not mounted?). If it moved, point {TEACHER_ENV} at its new place (the results folder, its "
            "fold folder or the checkpoint): a checkpoint with the recorded sha256 "
            f"({', '.join(h[:12] + '…' for h in hashes if h)}) is accepted as the same teacher."
        )
    return recorded


def resolve_teachers(
    plans: dict,
    configuration: str,
    fold,
    options: dict,
    from_plans: set[str],
    record_file: Path | None,
    many: bool = False,
    fold_ensemble: bool = False,
) -> list[TeacherSpec]:
    """The teacher(s) of a student: recorded when resuming, else requested, else the default (module docstring).

    ``options``: the student's resolved options; ``from_plans``: those set in the plans block (named in messages);
    ``record_file``: the fold folder's ``hlfd_teacher.json`` (None when nnUNet_results is not set).
    """
    requested = requested_teachers(options, from_plans, fold, many)
    if plans.get("continue_training") and record_file is not None and record_file.is_file():
        return recorded_teachers(record_file, requested)
    if requested is not None:
        return requested
    if not nnUNet_results.is_set():
        raise OptionError("nnUNet_results is not set: the teacher cannot be located (and nnU-Net cannot train).")
    if fold_ensemble:
        return fold_ensemble_teachers(plans, configuration, fold, options)
    if many:
        return split_teachers(plans, configuration, fold, options)
    return [default_teacher(plans, configuration, fold, options)]
