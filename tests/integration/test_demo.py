"""The demo command end to end (its quick profile: same pipeline, debug schedule)."""

import contextlib
import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from nnunet_hlfd.cli import main

# run by one test process (pytest -n 2 --dist loadgroup), which builds the shared demo once
pytestmark = pytest.mark.xdist_group("demo")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = subprocess.run(
        ["nnunet_hlfd", "demo", "--output", str(out), "--profile", "quick"], capture_output=True, text=True
    )
    return out, result


def test_demo_quick_profile_prints_the_table(demo):
    out, result = demo
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in result.stdout  # progress output
    rows = json.loads((out / "demo_results.json").read_text())
    assert [r["model"] for r in rows] == ["teacher", "student alone", "HLFD student"]
    teacher, student, hlfd = rows
    assert student["parameters"] == hlfd["parameters"]
    assert student["parameters"] / teacher["parameters"] == pytest.approx(0.25, abs=0.01)
    for row in rows:
        assert set(row["dice"]) == set(row["hd95"]) == {"organ", "tumour"}
        assert all(0.0 <= d <= 1.0 for d in row["dice"].values())
        assert (out / "predictions" / row["trainer"] / "metrics_per_case.csv").is_file()
        assert row["predict_s_per_case"] > 0
    table = (out / "demo_results.md").read_text()
    assert "| HLFD student | nnUNetTrainerHLFD |" in table and table in result.stdout


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run(["nnunet_hlfd", "demo", "--output", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "--overwrite" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


# ---- the evaluation commands on the demo's outputs -------------------------------------------------------
def nnunet_hlfd(*args) -> str:
    """The package's CLI in this process (each new process would pay the imports again); returns stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([str(a) for a in args])
    return out.getvalue()


@pytest.fixture(autouse=True)
def _restore_ext_trainer(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", "")  # loading a model sets it, as the set-up line would


def non_blank_png(path: Path) -> np.ndarray:
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05, f"{path} is (nearly) blank"
    return image


def runs(out: Path) -> dict[str, Path]:
    roles = {"teacher": "nnUNetTrainerHLFDTeacher", "student": "nnUNetTrainerStudent", "hlfd": "nnUNetTrainerHLFD"}
    return {role: out / "predictions" / trainer for role, trainer in roles.items()}


def models(out: Path) -> dict[str, Path]:
    results = out / "nnUNet_results" / "Dataset991_HLFDDemo"
    return {role: results / f"{p.name}__nnUNetPlans__3d_fullres" for role, p in runs(out).items()}


def test_evaluate_and_compare_the_demo_runs(demo, tmp_path):
    out, _ = demo
    raw = out / "nnUNet_raw" / "Dataset991_HLFDDemo"
    predictions = runs(out)
    result = nnunet_hlfd("evaluate", predictions["hlfd"], raw / "labelsTs", "-o", tmp_path / "hlfd", "-np", "1")
    assert "2 cases" in result and "tumour: Dice" in result
    demo_rows = {r["model"]: r for r in json.loads((out / "demo_results.json").read_text())}
    summary = json.loads((tmp_path / "hlfd" / "metrics_summary.json").read_text())
    assert summary["classes"]["tumour"]["metrics"]["Dice"]["mean"] == demo_rows["HLFD student"]["dice"]["tumour"]

    result = nnunet_hlfd("compare", *[f"{k}={v}" for k, v in predictions.items()], "-o", tmp_path / "cmp")
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table in result and "### organ" in table and "### tumour" in table
    assert "| Δ vs student (p, gap recovered) |" in table and "| hlfd | " in table
    with open(tmp_path / "cmp" / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 6  # classes x runs x metrics
    dice = {r["run"]: float(r["mean"]) for r in rows if r["class"] == "organ" and r["metric"] == "Dice"}
    assert dice["teacher"] == pytest.approx(demo_rows["teacher"]["dice"]["organ"])


def test_efficiency_of_teacher_and_student(demo, tmp_path):
    """Both backends side by side, with the Dice of each setting's segmentations and the accuracy-vs-time figure."""
    out, _ = demo
    found = models(out)
    raw = out / "nnUNet_raw" / "Dataset991_HLFDDemo"
    result = nnunet_hlfd(
        "efficiency", f"teacher={found['teacher']}", f"student={found['student']}", "-i", raw / "imagesTs",
        "-r", raw / "labelsTs", "--cases", "2", "--repeats", "1", "--backend", "pytorch", "onnx", "--device", "cpu",
        "-o", tmp_path,
    )  # fmt: skip
    rows = {(r["model"], r["backend"]): r for r in json.loads((tmp_path / "efficiency.json").read_text())}
    assert sorted(rows) == [("student", "onnx"), ("student", "pytorch"), ("teacher", "onnx"), ("teacher", "pytorch")]
    demo_rows = {r["model"]: r for r in json.loads((out / "demo_results.json").read_text())}
    assert rows["teacher", "pytorch"]["parameters"] == demo_rows["teacher"]["parameters"]
    assert rows["student", "onnx"]["parameters"] == demo_rows["student alone"]["parameters"]
    # features halved at every stage: a quarter of the convolution work
    ratio = rows["student", "pytorch"]["macs_per_patch"] / rows["teacher", "pytorch"]["macs_per_patch"]
    assert ratio == pytest.approx(0.25, abs=0.02)
    for (model, _), row in rows.items():
        assert all(row["seconds"][phase] > 0 for phase in ("preprocessing", "network", "export"))
        assert row["seconds_per_case"] == pytest.approx(sum(row["seconds"].values()))
        assert row["peak_memory_mib"] > 0 and len(row["case_shapes"]) == 2
        # the same segmentations from both backends (the parity of the bundle), scored by `evaluate`
        assert row["dice"] == pytest.approx(rows[model, "pytorch"]["dice"], abs=1e-3)
        assert set(row["dice"]) == {"organ", "tumour"}
    assert "| teacher | cpu | onnx | off | 0.5 |" in result and "GMACs / patch" in result
    non_blank_png(tmp_path / "efficiency.png")


def test_visualize_contours_attention_and_training(demo, tmp_path, capsys):
    out, _ = demo
    raw = out / "nnUNet_raw" / "Dataset991_HLFDDemo"
    predictions, found = runs(out), models(out)
    nnunet_hlfd(
        "visualize", "cases", *[f"{k}={v}" for k, v in predictions.items()], "-i", raw / "imagesTs",
        "-r", raw / "labelsTs", "--cases", "case_006", "-o", tmp_path,
    )  # fmt: skip
    contours = non_blank_png(tmp_path / "case_006_contours.png")
    assert contours.shape[1] > 3 * contours.shape[0]  # image, reference and three models side by side
    nnunet_hlfd(
        "visualize", "attention", *[f"{k}={v}" for k, v in found.items()], "-i", raw / "imagesTs",
        "--case", "case_006", "-r", raw / "labelsTs", "-o", tmp_path,
    )  # fmt: skip
    non_blank_png(tmp_path / "case_006_attention.png")
    nnunet_hlfd(
        "visualize", "training", f"student={found['student']}", f"hlfd={found['hlfd']}", "-o", tmp_path / "t.png"
    )
    non_blank_png(tmp_path / "t.png")
    with pytest.raises(SystemExit) as exit_code:
        nnunet_hlfd("visualize", "attention", found["hlfd"], "-i", raw / "imagesTs", "--case", "nope")
    assert exit_code.value.code == 2 and "case nope has no image" in capsys.readouterr().err

    # images cut short (a killed copy): refused by every command that reads them, not read as zeros
    cut = tmp_path / "cut_images"
    shutil.copytree(raw / "imagesTs", cut)
    for image in cut.glob("*.nii.gz"):
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    for command in (
        ("visualize", "cases", f"hlfd={predictions['hlfd']}", "-i", cut, "-r", raw / "labelsTs", "--cases",
         "case_006", "-o", tmp_path),
        ("visualize", "attention", found["hlfd"], "-i", cut, "--case", "case_006", "-o", tmp_path),
        ("efficiency", found["student"], "-i", cut, "--repeats", "1", "--device", "cpu", "-o", tmp_path),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_code:
            nnunet_hlfd(*command)
        assert exit_code.value.code == 2 and "_0000.nii.gz is corrupt" in capsys.readouterr().err, command[:2]


def test_multi_teacher_student_of_limit_trained_teachers(demo, monkeypatch):
    """Last in this module: it replaces the demo's splits_final.json. `nnunet_hlfd split -k 2` writes 3 folds; two
    teachers train on their chunks with stock nnU-Net; the multi-teacher student finds them through
    hlfd_splits.json, trains on fold 2 (interrupted, resumed with nnUNetv2_train --c) and predicts with
    nnUNetv2_predict. What runs in this process runs nnU-Net's own training code (conftest.train_in_process)."""

    import torch
    from conftest import nnunet_predict, nnunet_train, train_in_process

    from nnunet_hlfd.errors import OptionError
    from nnunet_hlfd.runtime import INTERRUPTED_EXIT_CODE, STOP_AFTER_EPOCH_ENV, TEACHERS_ENV, nnunet_environment
    from nnunet_hlfd.trainers import TRAINERS

    out, _ = demo
    env = dict(nnunet_environment(out), nnUNet_n_proc_DA="0")
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    # the demo's teacher validated on fold 0 of nnU-Net's 5-fold split, as nnUNetv2_train does after training (the demo
    # leaves the validation out)
    train_in_process(env, "nnUNetTrainerHLFDTeacher", dataset_id=991, validation_only=True)
    printed = nnunet_hlfd("split", "991", "-k", "2", "--overwrite")
    preprocessed = out / "nnUNet_preprocessed" / "Dataset991_HLFDDemo"
    folds = json.loads((preprocessed / "splits_final.json").read_text())
    assert "fold 2: student on all 5 teacher cases" in printed and len(folds) == 3
    teacher, student = "nnUNetTrainerHLFDTeacher", "nnUNetTrainerMultiTeacher_confidence"
    results = out / "nnUNet_results" / "Dataset991_HLFDDemo"

    def train(fold: int, trainer: str = teacher, *extra: str, **extra_env) -> subprocess.CompletedProcess:
        return nnunet_train(dict(env, **extra_env), 991, "3d_fullres", trainer, *extra, check=False, fold=fold)

    # refused before anything is written: the demo's teacher (fold 0) was trained and validated on nnU-Net's 5-fold
    # split (validated above)
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer_class = TRAINERS[student]
    monkeypatch.setenv(TEACHERS_ENV, str(results / f"{teacher}__nnUNetPlans__3d_fullres" / "fold_0"))
    with pytest.raises(OptionError, match="trained on another split"):
        trainer_class(plans, "3d_fullres", 2, dataset_json, torch.device("cpu"))
    monkeypatch.delenv(TEACHERS_ENV)
    with pytest.raises(OptionError, match="not the student's fold"):
        trainer_class(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))

    for teacher_fold in (0, 1):  # the two teachers, each on its chunk; fold 1 validated (on the held-out cases)
        train_in_process(env, teacher, dataset_id=991, fold=teacher_fold, validate=teacher_fold == 1)
    fold = results / f"{teacher}__nnUNetPlans__3d_fullres" / "fold_1"
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"This split has {len(folds[1]['train'])} training and 1 validation cases." in log
    validated = {p.name.removesuffix(".nii.gz") for p in (fold / "validation").glob("*.nii.gz")}
    assert validated == set(folds[2]["val"])  # the student's held-out case, never a teacher's training case

    leaking = json.loads(json.dumps(folds))
    leaking[1]["train"].append(folds[2]["val"][0])
    (preprocessed / "splits_final.json").write_text(json.dumps(leaking))
    with pytest.raises(OptionError, match="leaking set-up.*teacher fold 1"):
        trainer_class(plans, "3d_fullres", 2, dataset_json, torch.device("cpu"))
    (preprocessed / "splits_final.json").write_text(json.dumps(folds))
    assert not (results / f"{student}__nnUNetPlans__3d_fullres").exists()

    # interrupted after epoch 1 (in this process, as nnUNetv2_train runs it), resumed through the CLI
    monkeypatch.setenv(STOP_AFTER_EPOCH_ENV, "1")
    with pytest.raises(SystemExit) as interrupted:
        train_in_process(env, student, dataset_id=991, fold=2)
    assert interrupted.value.code == INTERRUPTED_EXIT_CODE
    monkeypatch.delenv(STOP_AFTER_EPOCH_ENV)
    resumed = train(2, student, "--c")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    fold = results / f"{student}__nnUNetPlans__3d_fullres" / "fold_2"
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    assert [t["fold"] for t in final["distillation"]["teachers"]] == ["0", "1"]
    for term in ("kd_kl", "kd_feature", "kd_lovasz"):
        assert len(final["logging"][term]) == 2 and all(np.isfinite(final["logging"][term]))
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert log.count("2 teachers, ") == 2 and "teacher fold in" in log
    assert f"This split has {len(folds[2]['train'])} training and 1 validation cases." in log
    predictions = out / "multi_teacher_predictions"
    raw = out / "nnUNet_raw" / "Dataset991_HLFDDemo"
    nnunet_predict(env, 991, "3d_fullres", student, raw / "imagesTs", predictions, fold=2)
    assert len(list(predictions.glob("*.nii.gz"))) == len(list((raw / "imagesTs").glob("*.nii.gz")))

    # the fold ensemble distilled into one student on every case ('all'): the teacher folds 0 and 1 above are the
    # ensemble; refused on a cross-validation fold, trained through the CLI on 'all', predicted, and timed against
    # the ensemble it replaces
    ensemble_student = "nnUNetTrainerFoldEnsembleKD"
    with pytest.raises(OptionError, match="run it with fold 'all', not 2"):
        TRAINERS[ensemble_student](plans, "3d_fullres", 2, dataset_json, torch.device("cpu"))
    trained = train("all", ensemble_student)
    assert trained.returncode == 0, trained.stderr[-3000:]
    fold = results / f"{ensemble_student}__nnUNetPlans__3d_fullres" / "fold_all"
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert [t["fold"] for t in final["distillation"]["teachers"]] == ["0", "1"]
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "fold ensemble of" in log and "2 teachers, " in log
    nnunet_predict(env, 991, "3d_fullres", ensemble_student, raw / "imagesTs", out / "ensemble_student", fold="all")
    assert len(list((out / "ensemble_student").glob("*.nii.gz"))) == len(list((raw / "imagesTs").glob("*.nii.gz")))
    teacher_model = results / f"{teacher}__nnUNetPlans__3d_fullres"
    # fmt: off
    nnunet_hlfd("efficiency", f"ensemble={teacher_model}@0,1", f"one_student={fold.parent}@all", "-i", raw / "imagesTs",
                "--repeats", "1", "--device", "cpu", "-o", out / "ensemble_efficiency")
    # fmt: on
    rows = {r["model"]: r for r in json.loads((out / "ensemble_efficiency" / "efficiency.json").read_text())}
    assert rows["ensemble"]["folds"] == ["0", "1"] and rows["one_student"]["folds"] == ["all"]
    # two networks of the teacher's width against one of half the width: a quarter of the work per patch, once
    assert rows["one_student"]["macs_per_patch"] / rows["ensemble"]["macs_per_patch"] == pytest.approx(0.25, abs=0.02)
    for row in rows.values():
        assert all(row["seconds"][phase] > 0 for phase in ("preprocessing", "network", "export"))
