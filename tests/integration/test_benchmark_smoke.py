"""The benchmark harness end to end through its command line (the smoke profile: seconds per step, numbers that mean
nothing): two pieces under a time limit, the inherited student and a KD row on it (a variant) added in the second,
other NSD tolerances afterwards.
The multi-teacher row's jobs and teachers are checked in tests/unit/test_benchmark.py, its trainer through the CLI in
test_demo.py."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import shared_data

from nnunet_hlfd.benchmark import ROWS

# the script wrapper: the same command as `nnunet_hlfd benchmark`, and the way the README runs it from a checkout
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kits_benchmark.py"


def test_smoke_profile_end_to_end_in_two_pieces(tmp_path):
    labels = shared_data("kits19")
    work = tmp_path / "work"
    command = [sys.executable, str(SCRIPT), str(labels), "--profile", "smoke", "--work", str(work)]
    # a piece too short for any job: the data are prepared and kept, and the message says which limit would do
    first = subprocess.run([*command, "--time-limit-min", "0.001"], capture_output=True, text=True)
    assert first.returncode == 3, first.stdout[-2000:] + first.stderr[-2000:]
    assert "left no room for train teacher fold 0" in first.stderr and "--time-limit-min above" in first.stderr
    assert "nnUNetv2_plan_and_preprocess" in first.stdout
    assert (work / "test_cases.json").is_file() and not (work / "nnUNet_results").exists()
    # extra rows, added in the second piece: the inherited student, and a variant that distils into one
    variant = ["--rows", "student_init", "--variant", "hlfd_t1", "hlfd_init", '{"temperature": 1.0}']
    second = subprocess.run(
        [*command, *variant, "--report", str(tmp_path / "report.md")], capture_output=True, text=True
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "nnUNetv2_plan_and_preprocess" not in second.stdout and "converting" not in second.stdout  # kept
    assert "[1/8] train teacher fold 0" in second.stdout and "[8/8] predict hlfd_t1 fold 0" in second.stdout
    report = (tmp_path / "report.md").read_text()
    for row in ("teacher", "student", "student_init", "hlfd_t1"):
        assert f"| {row} | 1 × 1 |" in report  # one fold × one test case, per label
        assert f"\n| {row} | " in report.split("## Cross-validation")[1].split("## Efficiency")[0]
    # KD on an inherited student is also measured against the inherited student alone
    against_inherited = report.split("## Test-set comparison against `student_init`")[1].split("## Cross-validation")[0]
    assert "| Δ vs student_init (p, gap recovered) |" in against_inherited and "\n| hlfd_t1 | " in against_inherited
    assert "\n| student | " not in against_inherited
    assert (work / "report" / "vs_student_init" / "comparison.csv").is_file()
    results = work / "nnUNet_results" / "Dataset503_KiTSPhantomSmoke"
    recorded = json.loads((results / f"{ROWS['hlfd_init']}__nnUNetPlans_hlfd_t1__2d" / "plans.json").read_text())
    assert recorded["configurations"]["2d"]["hlfd"]["temperature"] == 1.0
    assert recorded["configurations"]["2d"]["hlfd"]["init"] == "teacher"
    teacher = recorded["configurations"]["2d"]["hlfd"]["teacher_used"]
    assert Path(teacher["model_folder"]) == results / f"{ROWS['teacher']}__nnUNetPlans__2d"  # the benchmark's
    assert "### kidney" in report and "### tumor" in report
    assert report.count("Not measured in the `smoke` profile") == 2  # efficiency and step overhead: tested elsewhere
    assert (work / "report" / "phantom_samples.png").is_file() and list((work / "report" / "cases").glob("*.png"))
    import torch

    def epochs(trainer, plans="nnUNetPlans"):
        checkpoint = results / f"{trainer}__{plans}__2d" / "fold_0" / "checkpoint_final.pth"
        return torch.load(checkpoint, map_location="cpu", weights_only=False)["current_epoch"]

    assert (
        epochs(ROWS["teacher"]) == 2
        and epochs(ROWS["student"]) == epochs(ROWS["hlfd_init"], "nnUNetPlans_hlfd_t1") == 1
    )
    summary = json.loads((work / "report" / "summary.json").read_text())
    assert set(summary["test"]) == {"teacher", "student", "student_init", "hlfd_t1"} and summary["folds"] == [0]
    assert summary["test"]["hlfd_t1"]["tumor"]["baseline"] == "student"  # the random-init student of its width
    assert set(summary["test"]["hlfd_t1"]["tumor"]) >= {"mean", "std", "delta_vs_baseline", "p_value", "gap_recovered"}
    assert set(summary["cross_validation_dice"]["teacher"]) == {"kidney", "tumor"}
    assert "tumor ≥ 0.05, per fold" in report and "tumor ≥ teacher, per fold" in report  # when each row learns
    training_time = report.split("| run | models | epochs | train min per model |")[1].split("\n\n")[0]
    assert "\n| teacher | 1 | 2 | " in training_time and "\n| hlfd_t1 | 1 | 1 | " in training_time
    assert "NSD@1mm" in report.split("### tumor")[1]

    # other NSD tolerances: the finished predictions are evaluated again, nothing is trained or predicted
    tolerances = ["--tolerance-mm", "tumor=2.5", "1.5"]
    third = subprocess.run([*command, *variant, *tolerances], capture_output=True, text=True)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert "evaluating the test predictions again" in third.stdout and "/8]" not in third.stdout  # no job ran
    report = (work / "report" / "benchmark_report.md").read_text()
    assert "NSD@2.5mm" in report.split("### tumor")[1] and "--tolerance-mm tumor=2.5 1.5" in report
    evaluated = json.loads((work / "predictions" / "student" / "fold_0" / "metrics_summary.json").read_text())
    assert evaluated["nsd_tolerance_mm"] == {"kidney": 1.5, "tumor": 2.5}
    wrong = subprocess.run([*command, "--tolerance-mm", "tumour=2"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "the labels/regions are kidney, tumor" in wrong.stderr
