"""Leakage: no teacher of a multi-teacher student may have trained on a case the student validates on."""

import json

from nnunet_hlfd.errors import OptionError
from nnunet_hlfd.runtime import preprocessed_folder
from nnunet_hlfd.splits import SPLITS_FILE, check_no_leakage
from nnunet_hlfd.teacher.load import Teacher


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
    splits_file = preprocessed_folder(plans["dataset_name"]) / SPLITS_FILE
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
