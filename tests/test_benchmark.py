"""The KiTS benchmark harness: its split, its jobs, its plan changes, and one smoke run end to end (stopped by its
time limit after the preparation, then continued) on real KiTS label maps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data

from nnunet_hlfd.benchmark import (
    PROFILES,
    ROWS,
    BenchmarkError,
    Harness,
    benchmark_splits,
    half_teacher_folds,
    planned_jobs,
    with_rows,
    with_variants,
)
from nnunet_hlfd.splits import check_no_leakage
from nnunet_hlfd.trainers import TRAINERS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kits_benchmark.py"


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
    for name in ("multi_teacher", "contrastive", "hlfd", "student"):
        assert name in PROFILES["cpu"].rows
    jobs = planned_jobs(PROFILES["cpu"])
    trains = [j for j in jobs if j.kind == "train"]
    assert [j.kind for j in jobs] == ["train"] * len(trains) + ["predict"] * (len(jobs) - len(trains))
    teachers = [j for j in trains if j.trainer == ROWS["teacher"]]
    assert trains[: len(teachers)] == teachers and sorted(j.fold for j in teachers) == list(range(9))
    assert len(trains) == 9 + 3 * (len(PROFILES["cpu"].rows) - 1)
    without = with_rows(PROFILES["cpu"], ["hlfd"])
    assert without.rows == ("teacher", "student", "hlfd")
    assert all(j.trainer != ROWS["teacher"] or j.fold < 3 for j in planned_jobs(without))  # no limit-trained ones
    with pytest.raises(BenchmarkError, match="unknown rows"):
        with_rows(PROFILES["cpu"], ["nope"])


def test_plan_changes_are_written_once_and_a_changed_schedule_is_refused(tmp_path, plans):
    plans["configurations"]["2d"] = plans["configurations"]["3d_fullres"]
    plans_file = tmp_path / "nnUNetPlans.json"
    plans_file.write_text(json.dumps(plans))
    profile = PROFILES["smoke"]
    Harness(profile, tmp_path, tmp_path / "work").fix_plans(plans_file)
    configuration = json.loads(plans_file.read_text())["configurations"]["2d"]
    assert configuration["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16, 16]
    assert configuration["batch_size"] == 2 and configuration["hlfd_schedule"]["epochs"] == 1
    from dataclasses import replace

    from nnunet_hlfd.benchmark import Schedule

    changed = replace(profile, schedule=Schedule(5, 2, 1, False))
    with pytest.raises(BenchmarkError, match="holds the schedule"):
        Harness(changed, tmp_path, tmp_path / "work").fix_plans(plans_file)


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
    command = Harness(profile, Path("labels"), tmp_path / "w").command()  # what the report prints
    assert command.endswith("--rows hlfd --variant hlfd_t1 hlfd '" + json.dumps({"alpha": 0.5, "temperature": 1}) + "'")
    assert "--rows" not in Harness(PROFILES["cpu"], Path("labels"), tmp_path / "w").command()

    plans["configurations"]["2d"] = plans["configurations"]["3d_fullres"]
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    harness = Harness(profile, tmp_path, tmp_path / "work")
    harness.write_variant_plans(tmp_path, profile.variants[0])
    written = json.loads((tmp_path / "nnUNetPlans_hlfd_t1.json").read_text())
    assert written["plans_name"] == "nnUNetPlans_hlfd_t1"
    assert written["configurations"]["2d"]["hlfd"] == {"alpha": 0.5, "temperature": 1, "teacher_plans": "nnUNetPlans"}
    assert written["configurations"]["3d_fullres"] == plans["configurations"]["3d_fullres"]  # otherwise a copy
    harness.write_variant_plans(tmp_path, profile.variants[0])  # the same options: kept
    changed = with_variants(PROFILES["cpu"], [("hlfd_t1", "hlfd", '{"temperature": 2}')])
    with pytest.raises(BenchmarkError, match="Give the variant a new name"):
        Harness(changed, tmp_path, tmp_path / "work").write_variant_plans(tmp_path, changed.variants[0])

    for spec, message in [
        (("hlfd", "hlfd", '{"alpha": 1}'), "not a row name"),
        (("a__b", "hlfd", '{"alpha": 1}'), "single underscores"),
        (("x", "teacher", '{"alpha": 1}'), "not one of the rows"),
        (("x", "multi_teacher", '{"kl_weight": 1}'), "not one of the rows"),  # its teachers come from the harness
        (("x", "hlfd", "{alpha: 1}"), "not JSON"),
        (("x", "hlfd", '{"alpah": 1}'), "keys among"),
        (("x", "student", '{"alpha": 1}'), "keys among"),  # the student alone has no KD options
        (("x", "hlfd", '{"teacher_plans": "other"}'), "keys among"),  # the benchmark's teacher stays
    ]:
        with pytest.raises(BenchmarkError, match=message):
            with_variants(PROFILES["cpu"], [spec])


def test_smoke_profile_end_to_end_in_two_pieces(tmp_path):
    labels = shared_data("kits19")
    work = tmp_path / "work"
    command = [sys.executable, str(SCRIPT), str(labels), "--profile", "smoke", "--work", str(work)]
    first = subprocess.run([*command, "--time-limit-min", "0"], capture_output=True, text=True)
    assert first.returncode == 3, first.stdout[-2000:] + first.stderr[-2000:]
    assert "run the same command again" in first.stderr and "nnUNetv2_plan_and_preprocess" in first.stdout
    assert (work / "test_cases.json").is_file() and not (work / "nnUNet_results").exists()
    variant = ["--variant", "hlfd_t1", "hlfd", '{"temperature": 1.0}']  # an extra row, added in the second piece
    second = subprocess.run(
        [*command, *variant, "--report", str(tmp_path / "report.md")], capture_output=True, text=True
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "nnUNetv2_plan_and_preprocess" not in second.stdout and "converting" not in second.stdout  # kept
    assert "[1/10] train teacher fold 0" in second.stdout and "[10/10] predict hlfd_t1 fold 0" in second.stdout
    report = (tmp_path / "report.md").read_text()
    for row in ("teacher", "student", "multi_teacher", "hlfd_t1"):
        assert f"| {row} | 1 × 1 |" in report  # one fold × one test case, per label
        assert f"\n| {row} | " in report.split("## Cross-validation")[1].split("## Efficiency")[0]
    results = work / "nnUNet_results" / "Dataset503_KiTSPhantomSmoke"
    recorded = json.loads((results / f"{ROWS['hlfd']}__nnUNetPlans_hlfd_t1__2d" / "plans.json").read_text())
    assert recorded["configurations"]["2d"]["hlfd"]["temperature"] == 1.0
    teacher = recorded["configurations"]["2d"]["hlfd"]["teacher_used"]
    assert Path(teacher["model_folder"]) == results / f"{ROWS['teacher']}__nnUNetPlans__2d"  # the benchmark's
    assert "### kidney" in report and "### tumor" in report and "Not measured in the `smoke` profile" in report
    assert (work / "report" / "phantom_samples.png").is_file() and list((work / "report" / "cases").glob("*.png"))
    multi = work / "nnUNet_results" / "Dataset503_KiTSPhantomSmoke" / f"{ROWS['multi_teacher']}__nnUNetPlans__2d"
    used = json.loads((multi / "fold_0" / "hlfd_teacher.json").read_text())["teachers"]
    assert [t["spec"]["fold"] for t in used] == ["1", "2"]  # the two limit-trained teachers of fold 0
