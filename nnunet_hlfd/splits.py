"""Which cases a run trains on: a seeded fraction of a fold's training cases, and splits for limit-trained
teachers whose training data never includes the student's validation cases."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from nnunet_hlfd.errors import OptionError
from nnunet_hlfd.files import write_text

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


def disjoint_chunks(cases: list[str], count: int, rng: np.random.RandomState) -> list[list[str]]:
    """``cases`` shuffled with ``rng`` and cut into ``count`` disjoint chunks of (nearly) equal size, each sorted: the
    subsets of limit-trained teachers, here and in the benchmark's split."""
    shuffled = [cases[i] for i in rng.permutation(len(cases))]
    return [sorted(chunk.tolist()) for chunk in np.array_split(shuffled, count)]


# ---- limit-trained teachers --------------------------------------------------------------------------------
SPLITS_FILE = "splits_final.json"  # nnU-Net's
ROLES_FILE = "hlfd_splits.json"  # which fold of splits_final.json is which teacher, and which is the student's


def limit_trained_splits(
    cases: list[str],
    num_teachers: int | None = None,
    groups: dict[str, list[str]] | None = None,
    holdout: float = 0.2,
    seed: int = 0,
) -> dict:
    """Folds for k teachers that each train on a small disjoint subset, and one student fold.

    A seeded ``holdout`` share of the cases (of every group, when ``groups`` are given) is the validation set of
    every fold. The rest is split into ``num_teachers`` disjoint chunks, or kept as ``groups`` (e.g. one site
    each); teacher i is fold i and trains on its chunk; the student is fold k and trains on all of them. So no
    teacher has seen a case the student is validated on.
    """
    if (num_teachers is None) == (groups is None):
        raise OptionError("give either a number of teachers or groups of cases (e.g. sites), not both")
    if not 0 < holdout < 1:
        raise OptionError(f"holdout must be in (0, 1), got {holdout}")
    rng = np.random.RandomState(seed)
    if groups is None:
        if num_teachers < 1:
            raise OptionError(f"at least one teacher is needed, got {num_teachers}")
        groups = {"all": sorted(cases)}
    else:
        unknown = sorted(set().union(*groups.values()) - set(cases))
        if unknown:
            raise OptionError(f"{len(unknown)} grouped case(s) are not training cases of the dataset: {unknown[:5]}")
    validation, rest = [], {}
    for name, members in groups.items():
        members = sorted(members)
        order = rng.permutation(len(members))
        count = int(round(holdout * len(members)))
        validation += [members[i] for i in order[:count]]
        rest[name] = sorted(members[i] for i in order[count:])
    if num_teachers is not None:
        remaining = rest["all"]
        if len(remaining) < num_teachers:
            raise OptionError(f"{len(remaining)} training cases cannot make {num_teachers} non-empty teacher subsets")
        rest = {f"chunk_{i}": chunk for i, chunk in enumerate(disjoint_chunks(remaining, num_teachers, rng))}
    empty = [name for name, members in rest.items() if not members]
    if empty or not validation:
        raise OptionError(
            f"too few cases: {'groups ' + str(empty) + ' have no training cases left' if empty else 'no validation'}"
            " after the holdout; lower --holdout or use fewer teachers"
        )
    validation = sorted(validation)
    folds = [{"train": members, "val": validation} for members in rest.values()]
    folds.append({"train": sorted(c for members in rest.values() for c in members), "val": validation})
    roles = {
        "teacher_folds": list(range(len(rest))),
        "teacher_subsets": list(rest),
        "student_fold": len(rest),
        "holdout": holdout,
        "seed": seed,
    }
    return {"folds": folds, "roles": roles}


def leaking_cases(folds: list[dict], teacher_folds: list[int], student_fold: int) -> dict[int, list[str]]:
    """Per teacher fold, the student's validation cases that teacher trained on (empty: no leak)."""
    missing = [f for f in [*teacher_folds, student_fold] if not 0 <= f < len(folds)]
    if missing:
        raise OptionError(f"fold(s) {missing} are not in the splits file, which has folds 0..{len(folds) - 1}")
    student_val = set(folds[student_fold]["val"])
    leaks = {f: sorted(student_val & set(folds[f]["train"])) for f in teacher_folds}
    return {f: cases for f, cases in leaks.items() if cases}


def check_no_leakage(folds: list[dict], teacher_folds: list[int], student_fold: int) -> None:
    leaks = leaking_cases(folds, teacher_folds, student_fold)
    if leaks:
        detail = "; ".join(
            f"teacher fold {f} trained on {len(c)} of them ({', '.join(c[:3])}...)" for f, c in leaks.items()
        )
        raise OptionError(
            f"leaking set-up: the student's validation cases (fold {student_fold}) are training cases of its "
            f"teachers: {detail}. Its validation Dice would reward copying the teachers. Write splits with "
            "`nnunet_hlfd split` so that the teachers never see the student's validation cases."
        )


def _dataset_folders(dataset: str | int) -> tuple[str, Path, Path]:
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise OptionError(f"dataset {dataset}: {e}") from None
    raw, preprocessed = Path(nnUNet_raw.get()) / name, Path(nnUNet_preprocessed.get()) / name
    if not preprocessed.is_dir():
        raise OptionError(f"{preprocessed} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} first")
    return name, raw, preprocessed


def check_splits_file(dataset: str | int, teacher_folds: list[int], student_fold: int) -> str:
    """Check the dataset's splits_final.json (e.g. one written by hand) for leakage."""
    _, _, preprocessed = _dataset_folders(dataset)
    target = preprocessed / SPLITS_FILE
    if not target.is_file():
        raise OptionError(f"{target} not found: nnU-Net writes it on the first training, or use `nnunet_hlfd split`")
    if not teacher_folds:
        raise OptionError("--check needs the teacher folds and then the student fold, e.g. --check 0 1 2 3")
    check_no_leakage(json.loads(target.read_text()), teacher_folds, student_fold)
    return f"no leakage: no teacher fold {teacher_folds} trains on a validation case of fold {student_fold}"


def write_limit_trained_splits(
    dataset: str | int,
    num_teachers: int | None = None,
    by_site: bool = False,
    holdout: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Write ``splits_final.json`` (and ``hlfd_splits.json``, the folds' roles) into the dataset's
    nnUNet_preprocessed folder; an existing split is replaced only with ``overwrite`` and kept as ``.bak``."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    _, raw, preprocessed = _dataset_folders(dataset)
    cases = sorted(get_filenames_of_train_images_and_targets(str(raw), json.loads((raw / "dataset.json").read_text())))
    groups = None
    if by_site:
        sites = raw / "sites.json"
        if not sites.is_file():
            raise OptionError(
                f"{sites} not found: --by-site needs the site of every case, as `nnunet_hlfd convert "
                "prostate-multisite` writes it ({site: [case ids]})"
            )
        groups = json.loads(sites.read_text())
    result = limit_trained_splits(cases, None if by_site else num_teachers, groups, holdout, seed)
    roles = result["roles"]
    check_no_leakage(result["folds"], roles["teacher_folds"], roles["student_fold"])
    target = preprocessed / SPLITS_FILE
    if target.exists() and not overwrite:
        raise OptionError(
            f"{target} exists (nnU-Net's default split or an earlier one; models trained on it depend on it): pass "
            "--overwrite to replace it (the old one is kept as splits_final.json.bak)"
        )
    if target.exists():
        backup = target.with_name(SPLITS_FILE + ".bak")
        if backup.exists():
            backup = target.with_name(f"{SPLITS_FILE}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        shutil.copy2(target, backup)
    write_text(preprocessed / ROLES_FILE, json.dumps(roles, indent=2))
    write_text(target, json.dumps(result["folds"], indent=2))
    lines = [f"wrote {target} ({len(result['folds'])} folds) and {preprocessed / ROLES_FILE}:"]
    for fold, subset in zip(roles["teacher_folds"], roles["teacher_subsets"]):
        lines.append(f"  fold {fold}: teacher on {subset} ({len(result['folds'][fold]['train'])} cases)")
    student = result["folds"][roles["student_fold"]]
    lines.append(
        f"  fold {roles['student_fold']}: student on all {len(student['train'])} teacher cases; every fold "
        f"validates on the same {len(student['val'])} held-out cases"
    )
    lines.append(
        "Train each teacher with stock nnU-Net, e.g. "
        + " && ".join(f"nnUNetv2_train {dataset} 3d_fullres {f}" for f in roles["teacher_folds"][:2])
        + (" && ..." if len(roles["teacher_folds"]) > 2 else "")
    )
    return "\n".join(lines)
