"""The KiTS benchmark harness in pieces: its split, its jobs, its plan changes, its refusals, the seeds it plans
(the smoke run end to end is in tests/integration/test_benchmark_smoke.py)."""

import json
import os
import re
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from nnunet_hlfd.benchmark import (
    PROFILES,
    ROWS,
    Harness,
    Schedule,
    benchmark_splits,
    dice_summary,
    half_teacher_folds,
    planned_jobs,
    reproducing_command,
    row_job,
    with_folds,
    with_rows,
    with_variants,
)
from nnunet_hlfd.cli import main
from nnunet_hlfd.errors import BenchmarkError
from nnunet_hlfd.splits import check_no_leakage
from nnunet_hlfd.trainers import TRAINERS


def test_split_holds_out_a_test_set_and_nests_the_limit_trained_teachers():
    cases = [f"case_{i:05d}" for i in range(20)]
    splits = benchmark_splits(cases, folds=3, test_fraction=0.25, seed=0)
    assert splits == benchmark_splits(list(reversed(cases)), 3, 0.25, 0)  # depends on the set of cases only
    test, folds = set(splits["test"]), splits["folds"]
    assert len(test) == 5 and len(folds) == 3 + 3 * 2
    development = set(cases) - test
    assert set().union(*(f["val"] for f in folds[:3])) == development  # every development case validated once
    for fold in range(3):
        cv = folds[fold]
        assert not test & (set(cv["train"]) | set(cv["val"])) and set(cv["train"]) | set(cv["val"]) == development
        halves = [folds[t] for t in half_teacher_folds(fold, 3)]
        assert set(halves[0]["train"]).isdisjoint(halves[1]["train"])
        assert set(halves[0]["train"]) | set(halves[1]["train"]) == set(cv["train"])
        assert all(h["val"] == cv["val"] for h in halves)
        check_no_leakage(folds, half_teacher_folds(fold, 3), fold)  # the multi-teacher trainer's own check
    with pytest.raises(BenchmarkError, match="too few"):
        benchmark_splits(cases[:4], folds=1, test_fraction=0.2)


def test_every_row_is_a_benchmark_trainer_and_teachers_train_first():
    assert set(ROWS.values()) <= set(TRAINERS)  # multi-teacher and contrastive KD included
    for name in ("student", "student_init", "hlfd", "hlfd_paper", "cwd_init", "at_init"):
        assert name in PROFILES["cpu"].rows
    profile = with_rows(PROFILES["cpu"], ["hlfd", "multi_teacher", "multi_scale_contrastive"])
    jobs = planned_jobs(profile)
    trains = [j for j in jobs if j.kind == "train"]
    assert [j.kind for j in jobs] == ["train"] * len(trains) + ["predict"] * (len(jobs) - len(trains))
    teachers = [j for j in trains if j.trainer == ROWS["teacher"]]
    assert trains[: len(teachers)] == teachers and sorted(j.fold for j in teachers) == list(range(9))
    assert len(trains) == 9 + 3 * (len(profile.rows) - 1)
    without = with_rows(PROFILES["cpu"], ["hlfd"])
    assert without.rows == ("teacher", "student", "hlfd")
    assert all(j.trainer != ROWS["teacher"] or j.fold < 3 for j in planned_jobs(without))  # no limit-trained ones
    with pytest.raises(BenchmarkError, match="unknown rows"):
        with_rows(PROFILES["cpu"], ["nope"])


def test_a_subset_of_folds_keeps_the_split_and_its_limit_trained_teachers():
    profile = with_folds(with_rows(PROFILES["cpu"], ["hlfd", "multi_teacher"]), [1])
    assert profile.folds == (1,) and profile.cv_folds == 3
    jobs = planned_jobs(profile)
    assert {j.fold for j in jobs if j.row not in ("teacher", "limit-trained teacher")} == {1}
    # the teacher's convergence is judged on its whole cross-validation: every fold's teacher trains
    assert [j.fold for j in jobs if j.row == "teacher" and j.kind == "train"] == [0, 1, 2]
    assert sorted(j.fold for j in jobs if j.row == "limit-trained teacher") == half_teacher_folds(1, 3) == [5, 6]
    assert reproducing_command(profile, Path("labels"), Path("w")).endswith("--folds 1")
    assert with_folds(PROFILES["cpu"], None) is PROFILES["cpu"]
    with pytest.raises(BenchmarkError, match=r"folds \[3\]: the cpu profile has cross-validation folds \[0, 1, 2\]"):
        with_folds(PROFILES["cpu"], [0, 3])


def test_plan_changes_are_written_once_and_a_changed_schedule_is_refused(tmp_path, plans):
    plans["configurations"]["2d"] = plans["configurations"]["3d_fullres"]
    plans_file = tmp_path / "nnUNetPlans.json"
    plans_file.write_text(json.dumps(plans))
    profile = replace(PROFILES["smoke"], teacher_schedule=Schedule(3, 2, 1, False, 0))
    Harness(profile, tmp_path, tmp_path / "work").fix_plans(plans_file)
    configuration = json.loads(plans_file.read_text())["configurations"]["2d"]
    assert configuration["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16, 16]
    assert configuration["batch_size"] == 2 and configuration["hlfd_schedule"]["epochs"] == 1
    assert configuration["hlfd_teacher_schedule"] == {
        "epochs": 3, "iterations": 2, "val_iterations": 1, "mirroring": False, "seed": 0, "test_time_mirroring": None
    }  # fmt: skip
    for changed in (replace(profile, schedule=Schedule(5, 2, 1, False)), replace(profile, teacher_schedule=None)):
        with pytest.raises(BenchmarkError, match="holds the schedules"):
            Harness(changed, tmp_path, tmp_path / "work").fix_plans(plans_file)


def _fake_results(harness: Harness, row: str, dice: dict[str, list[float]]) -> None:
    """nnU-Net's validation summary of every fold of ``row``, with these Dice values (label -> per fold)."""
    raw = harness.work / "nnUNet_raw" / harness.dataset
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "kidney": 1, "tumor": 2}}))
    for k, fold in enumerate(harness.profile.folds):
        folder = harness.result_file(row_job(harness.profile, "train", row, fold)).parent / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        mean = {"1": {"Dice": dice["kidney"][k]}, "2": {"Dice": dice["tumor"][k]}}
        (folder / "summary.json").write_text(json.dumps({"mean": mean}))


def test_students_wait_for_a_converged_teacher(tmp_path):
    profile = PROFILES["cpu"]
    assert profile.teacher_min_dice == (("tumor", 0.6),) and profile.teacher_schedule.epochs > profile.schedule.epochs
    harness = Harness(profile, tmp_path, tmp_path / "work")
    with pytest.raises(BenchmarkError, match="train the teacher folds first"):
        harness.check_teacher()
    _fake_results(harness, "teacher", {"kidney": [0.95, 0.94, 0.96], "tumor": [0.7, 0.5, 0.55]})
    with pytest.raises(BenchmarkError, match=r"not converged: cross-validation Dice tumor 0.583 < 0.6 .*new --work"):
        harness.check_teacher()
    _fake_results(harness, "teacher", {"kidney": [0.95, 0.94, 0.96], "tumor": [0.7, 0.6, 0.65]})
    harness.check_teacher()  # converged: no refusal
    assert harness.validation_dice("student") is None  # not trained yet


def test_summary_json_holds_the_test_set_dice_of_every_row():
    from nnunet_hlfd.evaluation.compare import COMPARED, Run, compare_runs

    cases = [f"c{i}" for i in range(8)]

    def run(name, offset):  # two folds, one label; each case's Dice = base + offset
        repeat = {c: 0.1 * i / 8 + offset for i, c in enumerate(cases)}
        metrics = {m: [repeat, {c: v + 0.01 for c, v in repeat.items()}] for m in COMPARED}
        return Run(name, [], {"tumor": metrics})

    rows = compare_runs([run("teacher", 0.6), run("student", 0.2), run("hlfd", 0.5)], "student", "teacher")
    summary = dice_summary(rows)
    assert set(summary) == {"teacher", "student", "hlfd"}
    hlfd = summary["hlfd"]["tumor"]
    assert hlfd["delta_vs_baseline"] == pytest.approx(0.3) and hlfd["gap_recovered"] == pytest.approx(0.75)
    assert hlfd["paired_cases"] == 8 and hlfd["p_value"] == pytest.approx(2 / 2**8)  # all 8 pairs positive
    assert hlfd["std"] == pytest.approx(np.std([0.54375, 0.55375], ddof=1)) and hlfd["repeats"] == 2
    assert summary["student"]["tumor"]["delta_vs_baseline"] is None


def test_each_row_is_compared_with_the_student_alone_of_its_width_and_its_start():
    rows = ["hlfd", "student_init", "hlfd_init", "student_w025", "student_w025_init", "hlfd_w025_init"]
    profile = with_variants(with_rows(PROFILES["cpu"], rows), [("hlfd_init_t1", "hlfd_init", '{"temperature": 1.0}')])
    assert profile.comparisons() == {
        # the half-width random-init student: every half-width row, and the quarter-width student itself
        "student": ["teacher", "student", "hlfd", "student_init", "hlfd_init", "student_w025", "hlfd_init_t1"],
        # distillation on an inherited student must beat the inherited student alone (a variant as its row)
        "student_init": ["teacher", "student_init", "hlfd", "hlfd_init", "hlfd_init_t1"],
        "student_w025": ["teacher", "student_w025", "student_w025_init", "hlfd_w025_init"],
        "student_w025_init": ["teacher", "student_w025_init", "hlfd_w025_init"],
    }
    # without the students of their width and start, the rows are compared with the half-width student only
    alone = with_rows(PROFILES["cpu"], ["hlfd_init", "hlfd_w025_init"])
    assert alone.comparisons() == {"student": ["teacher", "student", "hlfd_init", "hlfd_w025_init"]}


def test_the_epoch_a_row_reaches_the_teachers_level_is_that_of_its_trailing_window():
    from nnunet_hlfd.benchmark.report import _first_window_at

    curve = np.array(
        [0.0, 0.2, 0.9, 0.5, 0.95, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    )
    # 20 epochs: a window of 2; epochs (1, 2) average 0.55, (2, 3) 0.70, (4, 5) 0.925
    assert _first_window_at(curve, 0.55) == "2" and _first_window_at(curve, 0.7) == "3"
    assert _first_window_at(curve, 0.92) == "5" and _first_window_at(curve, 0.96) == "—"


def test_variants_are_rows_on_a_copy_of_the_plans_and_bad_ones_are_refused(tmp_path, plans):
    profile = with_variants(
        with_rows(PROFILES["cpu"], ["hlfd"]), [("hlfd_t1", "hlfd", '{"temperature": 1, "alpha": 0.5}')]
    )
    assert profile.rows == ("teacher", "student", "hlfd", "hlfd_t1")
    variant_jobs = [j for j in planned_jobs(profile) if j.row == "hlfd_t1"]
    assert {(j.kind, j.trainer, j.plans) for j in variant_jobs} == {
        (kind, ROWS["hlfd"], "nnUNetPlans_hlfd_t1") for kind in ("train", "predict")
    } and len(variant_jobs) == 6
    assert all(j.plans == "nnUNetPlans" for j in planned_jobs(profile) if j.row != "hlfd_t1")
    command = reproducing_command(profile, Path("labels"), tmp_path / "w")  # what the report prints
    assert command.endswith("--rows hlfd --variant hlfd_t1 hlfd '" + json.dumps({"alpha": 0.5, "temperature": 1}) + "'")
    assert "--rows" not in reproducing_command(PROFILES["cpu"], Path("labels"), tmp_path / "w")

    plans["configurations"]["2d"] = plans["configurations"]["3d_fullres"]
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    harness = Harness(profile, tmp_path, tmp_path / "work")
    harness.write_variant_plans(tmp_path, profile.variants[0])
    written = json.loads((tmp_path / "nnUNetPlans_hlfd_t1.json").read_text())
    assert written["plans_name"] == "nnUNetPlans_hlfd_t1"
    assert written["configurations"]["2d"]["hlfd"] == {"alpha": 0.5, "temperature": 1, "teacher_plans": "nnUNetPlans"}
    assert written["configurations"]["3d_fullres"] == plans["configurations"]["3d_fullres"]  # otherwise a copy
    harness.write_variant_plans(tmp_path, profile.variants[0])  # the same options: kept
    # other options before any training used the old ones: taken (it was refused, although nothing had trained)
    changed = with_variants(PROFILES["cpu"], [("hlfd_t1", "hlfd", '{"temperature": 2}')])
    Harness(changed, tmp_path, tmp_path / "work").write_variant_plans(tmp_path, changed.variants[0])
    written = json.loads((tmp_path / "nnUNetPlans_hlfd_t1.json").read_text())
    assert written["configurations"]["2d"]["hlfd"] == {"temperature": 2, "teacher_plans": "nnUNetPlans"}
    # once a training has used them (a checkpoint in one of its folds), other options are refused
    started = harness.model_folder(ROWS["hlfd"], "nnUNetPlans_hlfd_t1") / "fold_1"
    started.mkdir(parents=True)
    (started / "checkpoint_latest.pth").write_bytes(b"")
    with pytest.raises(BenchmarkError, match=r"fold_1 trained with the old ones. Give the variant a new name"):
        Harness(profile, tmp_path, tmp_path / "work").write_variant_plans(tmp_path, profile.variants[0])

    for spec, message in [
        (("hlfd", "hlfd", '{"alpha": 1}'), "not a row name"),
        (("a__b", "hlfd", '{"alpha": 1}'), "single underscores"),
        (("x", "teacher", '{"alpha": 1}'), "not one of the rows"),
        (("x", "multi_teacher", '{"kl_weight": 1}'), "not one of the rows"),  # its teachers come from the harness
        (("x", "hlfd", "{alpha: 1}"), "not JSON"),
        (("x", "hlfd", '{"alpah": 1}'), "keys among"),
        (("x", "student", '{"alpha": 1}'), "keys among"),  # the student alone has no KD options
        (("x", "hlfd", '{"teacher_plans": "other"}'), "keys among"),  # the benchmark's teacher stays
        # values, as the trainer checks them: refused now, not when the row trains after every teacher fold
        (
            ("x", "hlfd", '{"temperature": -1}'),
            r"nnUNetTrainerHLFD\): .*\"temperature\": -1.0 is not valid: a number > 0",
        ),
        (("x", "hlfd", '{"width": 2}'), r"\"width\": 2 is not valid: a number in \(0, 1\]"),
        (("x", "cwd", '{"weight": "3"}'), r"\"weight\": '3' is not valid: a finite number"),
        (("x", "student", '{"training_fraction": 0}'), r"training_fraction must be a number in \(0, 1\]"),
    ]:
        with pytest.raises(BenchmarkError, match=message):
            with_variants(PROFILES["cpu"], [spec])


def test_a_variant_may_change_the_schedule_only(tmp_path, plans):
    """A longer-schedule pair (the student alone and the inherited one at 100 epochs): the plans copy holds the
    rows' schedule with those changes, the seed and the teacher's schedule unchanged."""
    plans["configurations"]["2d"] = plans["configurations"]["3d_fullres"]
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    longer = '{"schedule": {"epochs": 100}}'
    profile = with_variants(
        PROFILES["cpu"], [("student_100ep", "student", longer), ("student_init_100ep", "student_init", longer)]
    )
    harness = Harness(profile, tmp_path, tmp_path / "work")
    harness.fix_plans(tmp_path / "nnUNetPlans.json")
    for variant in profile.variants:
        harness.write_variant_plans(tmp_path, variant)
    original = json.loads((tmp_path / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    copy = json.loads((tmp_path / "nnUNetPlans_student_init_100ep.json").read_text())["configurations"]["2d"]
    assert (
        copy["hlfd_schedule"] == {**original["hlfd_schedule"], "epochs": 100}
        and original["hlfd_schedule"]["epochs"] == 50
    )
    assert copy["hlfd_teacher_schedule"] == original["hlfd_teacher_schedule"]
    assert copy["hlfd"] == {**original["hlfd"], "teacher_plans": "nnUNetPlans"}
    assert profile.variants[1].options_json == longer
    assert reproducing_command(profile, Path("l"), tmp_path).endswith(
        f"--variant student_init_100ep student_init '{longer}'"
    )
    for schedule, message in (('{"schedule": {"epochs": 0}}', r'"epochs": 0 is not a whole number ≥ 1'),
                              ('{"schedule": {"seed": 3}}', "keys among"),
                              ('{"schedule": [100]}', "must be a JSON object")):  # fmt: skip
        with pytest.raises(BenchmarkError, match=message):
            with_variants(PROFILES["cpu"], [("x", "student", schedule)])


def test_every_row_of_a_fold_starts_from_the_same_weights_and_patches(tmp_path, monkeypatch):
    """The planned schedule's seed: the student alone and a KD row of one fold start from identical student weights
    (whatever the KD trainer builds after them) and draw their patches from the same generator state."""
    import copy

    import torch
    from conftest import DATASET, TINY_DATASET_JSON, tiny_plans, write_teacher
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_hlfd.trainers import nnUNetTrainerHLFD, nnUNetTrainerHLFDTeacher, nnUNetTrainerStudent

    results, preprocessed = tmp_path / "results", tmp_path / "preprocessed"
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    monkeypatch.delenv("nnUNet_hlfd_teacher", raising=False)
    data = preprocessed / DATASET / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    (data / "case_0.b2nd").write_bytes(b"")  # nnU-Net infers its dataset class from the file endings
    plans = tiny_plans()
    configuration = plans["configurations"]["3d_fullres"]
    configuration["hlfd_schedule"] = {"epochs": 1, "iterations": 1, "val_iterations": 1, "mirroring": False, "seed": 7}
    configuration["hlfd_teacher_schedule"] = {**configuration["hlfd_schedule"], "epochs": 4}
    configuration["hlfd"] = {"teacher_trainer": "nnUNetTrainerHLFDTeacher"}  # as the harness writes it
    write_teacher(results, plans, TINY_DATASET_JSON, folder="nnUNetTrainerHLFDTeacher__nnUNetPlans__3d_fullres")
    monkeypatch.setattr(nnUNetTrainer, "get_dataloaders", lambda self: (np.random.rand(), torch.rand(1).item()))

    def trainer(cls, fold=0):
        p = copy.deepcopy(plans)
        p["continue_training"] = False
        made = cls(p, "3d_fullres", fold, copy.deepcopy(TINY_DATASET_JSON), torch.device("cpu"))
        made.initialize()
        return made

    student, hlfd, other_fold = trainer(nnUNetTrainerStudent), trainer(nnUNetTrainerHLFD), None
    assert (student.num_epochs, hlfd.num_epochs, student.schedule["seed"]) == (1, 1, 7)
    weights, distilled = student.network.state_dict(), hlfd.network.state_dict()
    assert weights.keys() == distilled.keys() and all(torch.equal(weights[k], distilled[k]) for k in weights)
    assert student.get_dataloaders() == hlfd.get_dataloaders()  # the same generator state for the patches
    other_fold = trainer(nnUNetTrainerStudent, fold=1)
    assert not torch.equal(other_fold.network.state_dict()["encoder.stages.0.0.convs.0.conv.weight"],
                           weights["encoder.stages.0.0.convs.0.conv.weight"])  # fmt: skip
    teacher = nnUNetTrainerHLFDTeacher(
        {**copy.deepcopy(plans), "continue_training": False}, "3d_fullres", 0, TINY_DATASET_JSON, torch.device("cpu")
    )
    assert teacher.num_epochs == 4  # the teacher's own, longer schedule


def test_the_multi_teacher_row_trains_from_the_limit_trained_teachers_of_its_fold(tmp_path, monkeypatch):
    """What the harness hands nnUNetv2_train for each job: the fold's two limit-trained teachers for the multi-teacher
    row, --c when a checkpoint is there, the deadline; the interrupted exit code means "continue next piece"."""
    from nnunet_hlfd.runtime import INTERRUPTED_EXIT_CODE, STOP_AFTER_TIME_ENV, TEACHERS_ENV

    profile = with_rows(PROFILES["cpu"], ["multi_teacher"])
    harness = Harness(profile, tmp_path, tmp_path / "work", time_limit_min=60)
    calls, codes = [], iter([0, INTERRUPTED_EXIT_CODE, 1])
    monkeypatch.setattr(harness, "run", lambda args, log, env, check: calls.append((args, env)) or next(codes))
    job = next(j for j in planned_jobs(profile) if j.row == "multi_teacher" and j.fold == 1)
    assert harness.train(job) is True
    args, env = calls[-1]
    teachers = [harness.model_folder(ROWS["teacher"]) / f"fold_{k}" for k in half_teacher_folds(1, 3)]
    assert env[TEACHERS_ENV].split(os.pathsep) == [str(t) for t in teachers] and half_teacher_folds(1, 3) == [5, 6]
    assert args[:6] == ["nnUNetv2_train", "504", "2d", "1", "-tr", ROWS["multi_teacher"]] and "--c" not in args
    assert float(env[STOP_AFTER_TIME_ENV]) <= harness.deadline
    (harness.result_file(job).parent).mkdir(parents=True)
    (harness.result_file(job).parent / "checkpoint_latest.pth").touch()
    assert harness.train(job) is False  # stopped at the deadline: resumed by the next piece
    assert calls[-1][0][-1] == "--c"
    student = next(j for j in planned_jobs(profile) if j.row == "student" and j.fold == 0)
    with pytest.raises(BenchmarkError, match="train student fold 0 failed"):
        harness.train(student)
    assert TEACHERS_ENV not in calls[-1][1]


def test_the_fold_ensemble_rows_are_one_model_each_after_every_teacher_fold(tmp_path, monkeypatch):
    """The teacher's folds predicting together (-f 0 1 2), and its ensemble distilled into one student trained on fold
    'all' from exactly those folds (not the limit-trained teachers of the same results folder)."""
    from nnunet_hlfd.runtime import TEACHERS_ENV

    smoke = with_rows(
        replace(PROFILES["smoke"], cv_folds=3), ["student_init", "fold_ensemble_init", "teacher_ensemble"]
    )
    profile = with_folds(smoke, [1])
    jobs = [(j.kind, j.row, j.fold) for j in planned_jobs(profile)]
    assert jobs == [
        *[("train", "teacher", f) for f in (0, 1, 2)],  # every fold's teacher, though only fold 1 is run
        ("train", "student", 1), ("train", "student_init", 1),
        ("train", "fold_ensemble_init", "all"),  # after the per-fold rows
        ("predict", "teacher", 1), ("predict", "student", 1), ("predict", "student_init", 1),
        ("predict", "fold_ensemble_init", "all"), ("predict", "teacher_ensemble", "ensemble"),
    ]  # fmt: skip
    assert profile.row_folds("teacher_ensemble") == ("ensemble",) and profile.row_folds("student") == (1,)
    assert profile.comparisons()["teacher"] == ["teacher", "fold_ensemble_init", "teacher_ensemble"]
    assert profile.comparisons()["student"][-2:] == ["fold_ensemble_init", "teacher_ensemble"]

    harness = Harness(profile, tmp_path, tmp_path / "work")
    calls = []
    monkeypatch.setattr(harness, "run", lambda args, log, env=None, check=True: calls.append((args, env)) or 0)
    monkeypatch.setattr(harness, "evaluate", lambda job: None)
    by_row = {(j.kind, j.row): j for j in planned_jobs(profile)}
    assert harness.train(by_row["train", "fold_ensemble_init"]) is True
    args, env = calls[-1]
    assert args[:6] == ["nnUNetv2_train", "503", "2d", "all", "-tr", ROWS["fold_ensemble_init"]]
    teachers = [str(harness.model_folder(ROWS["teacher"]) / f"fold_{f}") for f in (0, 1, 2)]
    assert env[TEACHERS_ENV].split(os.pathsep) == teachers

    def folds_predicted(job):
        harness.predict(job)
        args = calls[-1][0]
        return args[args.index("-f") + 1 : args.index("-tr")], args[args.index("-tr") + 1], args[args.index("-o") + 1]

    assert folds_predicted(by_row["predict", "teacher_ensemble"]) == (
        ["0", "1", "2"], ROWS["teacher"], str(harness.predictions("teacher_ensemble", "ensemble"))
    )  # fmt: skip
    assert folds_predicted(by_row["predict", "fold_ensemble_init"])[0] == ["all"]
    assert harness.validation_dice("teacher_ensemble") is None  # not the teacher's cross-validation again
    with pytest.raises(BenchmarkError, match="is not one of the rows"):
        with_variants(profile, [("fe_t1", "fold_ensemble_init", '{"temperature": 1.0}')])


def one_case_labels(tmp_path) -> Path:
    """A KiTS19 folder of one real label map (copied from ../shared/data)."""
    labels = tmp_path / "labels"
    shutil.copytree(shared_data("kits19") / "case_00000", labels / "case_00000")
    return labels


@pytest.mark.parametrize(
    "args, message",
    [
        (["--time-limit-min", "0"], "--time-limit-min 0: give a positive number of minutes"),
        (["--time-limit-min", "-5"], "--time-limit-min -5: give a positive number of minutes"),
        (["--variant", "hot", "hlfd", '{"temperature": -1}'], "variant hot .*a number > 0"),
        (["--labels", "nowhere"], "labels folder .*nowhere does not exist"),
        (["--labels", "garbage"], "segmentation.nii.gz is corrupt"),
    ],
    ids=["limit-0", "limit-negative", "variant-value", "no-labels", "not-an-image"],
)
def test_benchmark_refuses_before_preparing_anything(tmp_path, capsys, args, message):
    """Each of these ran on (and wrote a work folder) before: the limit stopped at once forever, the variant after
    every teacher fold, the labels with a traceback."""
    labels = one_case_labels(tmp_path)
    if args[0] == "--labels":
        labels = tmp_path / args[1]
        if args[1] == "garbage":
            (labels / "case_00000").mkdir(parents=True)
            (labels / "case_00000" / "segmentation.nii.gz").write_text("not an image")
        args = []
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", str(labels), "--profile", "smoke", "--work", str(tmp_path / "work"), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "work").exists()


def test_a_work_folder_keeps_its_label_source_and_its_record(tmp_path):
    """Reused with other label maps, the work folder was accepted and its records rewritten while the phantoms
    stayed the old ones. The check comes before the harness writes anything (profile.json included)."""
    from nnunet_hlfd.benchmark.phantom import SETTINGS_FILE, label_cases, label_fingerprints
    from nnunet_hlfd.errors import PhantomError

    labels = one_case_labels(tmp_path)
    profile = PROFILES["smoke"]
    work = tmp_path / "work"
    (work / "phantoms").mkdir(parents=True)
    record = {**asdict(profile.phantom), "source": str(labels.resolve())}
    record["labels"] = label_fingerprints(label_cases(labels))
    (work / "phantoms" / SETTINGS_FILE).write_text(json.dumps(record))
    (work / "profile.json").write_text("as the first run wrote it")
    other = tmp_path / "other"
    shutil.copytree(shared_data("kits19") / "case_00001", other / "case_00001")
    with pytest.raises(
        PhantomError,
        match=r"other label maps .*\(1 cases; 2 differ from, or are not among, the 1 recorded, e.g. case_00000\)",
    ):
        Harness(profile, other, work)()
    assert (work / "profile.json").read_text() == "as the first run wrote it"
    assert json.loads((work / "phantoms" / SETTINGS_FILE).read_text()) == record


def test_a_piece_that_cannot_start_a_job_says_which_limit_would(tmp_path, monkeypatch):
    """A positive limit too short for any job stopped with "run the same command again", which stopped again."""
    harness = Harness(PROFILES["smoke"], tmp_path, tmp_path / "work", time_limit_min=1e-6)
    assert harness.run_jobs() is False
    assert re.fullmatch(
        r"the limit of 1e-06 min left no room for train teacher fold 0 \(not measured yet\) after 0.0 min of start-up "
        r"and preparation: run again with --time-limit-min above 1 \(what was prepared is kept\)",
        harness.stopped_because,
    ), harness.stopped_because
    # a training stopped at the deadline is a piece done: the same command continues it
    harness = Harness(PROFILES["smoke"], tmp_path, tmp_path / "work", time_limit_min=10)
    monkeypatch.setattr(harness, "train", lambda job: False)
    assert harness.run_jobs() is False
    assert harness.stopped_because.startswith("the limit was reached during train teacher fold 0: run the same")


def test_nnunet_commands_are_found_beside_this_python_without_path(tmp_path, monkeypatch, capsys):
    """`VENV/bin/nnunet_hlfd demo` without the venv on PATH died with FileNotFoundError (and left its folder, then
    refused as not empty)."""
    from nnunet_hlfd.errors import MissingCommandError
    from nnunet_hlfd.runtime import nnunet_command, run_nnunet

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert nnunet_command("nnUNetv2_train") == str(Path(sys.executable).parent / "nnUNetv2_train")
    code, _ = run_nnunet(["nnUNetv2_train", "-h"], {**os.environ}, tmp_path / "log.txt")
    assert code == 0 and "usage" in (tmp_path / "log.txt").read_text()
    assert shutil.which("nnUNetv2_train") is None  # not on PATH: found beside sys.executable
    # neither beside this Python nor on PATH: refused before the demo or the benchmark writes anything
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(MissingCommandError, match="nnUNetv2_train is neither beside .* nor on PATH: install"):
        nnunet_command("nnUNetv2_train")
    labels = one_case_labels(tmp_path)
    for args in (["demo", "--output", str(tmp_path / "demo")],
                 ["benchmark", str(labels), "--profile", "smoke", "--work", str(tmp_path / "work")]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2 and "nnUNetv2_plan_and_preprocess is neither" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists() and not (tmp_path / "work").exists()


def test_benchmark_help_says_what_each_profile_costs(capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "cpu (default): the documented benchmark, 2D, about 4.5 hours on 2 CPU cores" in help_text
    assert "--time-limit-min" in help_text and "smoke" in help_text
