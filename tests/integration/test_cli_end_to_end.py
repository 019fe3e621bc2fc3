"""The workflow through nnU-Net's own commands on the shared tiny synthetic 3D dataset, on CPU: an HLFD student
interrupted, resumed with --c and predicted with nnUNetv2_predict, and a student with adapters resumed with a moved
teacher. What nnU-Net would do the same in this process (refusals raised while the trainer is built, --val,
evaluation) runs in this process; every other trainer is run in test_trainers.py.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    CONFIG,
    DATASET,
    DATASET_ID,
    TEACHER,
    assert_bundle_predicts_like,
    assert_same_dice,
    model_folder,
    nnunet_metrics,
    predict,
    train,
    train_in_process,
)

from nnunet_hlfd.errors import OptionError, TeacherMismatchError, TeacherNotFoundError
from nnunet_hlfd.evaluation.evaluate import evaluate_folder
from nnunet_hlfd.ext_path import EXT_TRAINER_DIR
from nnunet_hlfd.runtime import INTERRUPTED_EXIT_CODE, STOP_AFTER_EPOCH_ENV

# run by one test process (pytest -n 2 --dist loadgroup), which builds the shared pipeline once
pytestmark = pytest.mark.xdist_group("pipeline")


def evaluate(env: dict, trainer: str, predictions: Path) -> dict:
    """nnU-Net's evaluation and our evaluate_folder on the same folders: the per-case Dice must agree (where nnU-Net
    says NaN, both masks are empty, which ours scores 1)."""
    labels = Path(env["nnUNet_raw"]) / DATASET / "labelsTs"
    folder = model_folder(env, trainer)
    summary = nnunet_metrics(labels, predictions, folder)
    evaluate_folder(predictions, labels, folder / "dataset.json", progress=False)
    assert_same_dice(summary, predictions / "metrics_per_case.csv")
    return summary


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def perturb_weights(checkpoint_file: Path) -> None:
    """Another teacher checkpoint: the same network, other weights."""
    t = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    t["network_weights"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in t["network_weights"].items()}
    torch.save(t, checkpoint_file)


def interrupt_after_first_epoch(fold: Path) -> None:
    """Make a finished run look like one that crashed after epoch 0 had been checkpointed."""
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 1
    checkpoint["logging"] = {k: v[:1] for k, v in checkpoint["logging"].items()}
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):  # best: only if some epoch's EMA improved
        (fold / name).unlink(missing_ok=True)


def test_ext_path_folder_holds_only_the_shim():
    assert sorted(p.name for p in Path(EXT_TRAINER_DIR).glob("*.py")) == ["__init__.py", "_nnunet_hlfd_ext_shim.py"]
    out = subprocess.run([sys.executable, "-m", "nnunet_hlfd.ext_path"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == EXT_TRAINER_DIR


def test_without_the_setup_line_nnunet_names_the_variable_to_set(pipeline):
    env = {k: v for k, v in pipeline.items() if k != "nnUNet_extTrainer"}
    result = train(env, "nnUNetTrainerHLFD", check=False)
    assert result.returncode != 0
    assert "Could not find requested nnunet trainer nnUNetTrainerHLFD" in result.stderr
    assert "nnUNet_extTrainer" in result.stderr  # the README's troubleshooting section starts from this line


def test_hlfd_interrupted_resumed_predicted_without_teacher_and_evaluated(pipeline, tmp_path):
    trainer = "nnUNetTrainerHLFD"
    teacher_folder = model_folder(pipeline, TEACHER)
    before = snapshot(teacher_folder)
    interrupted = train(dict(pipeline, **{STOP_AFTER_EPOCH_ENV: "1"}), trainer, check=False)
    assert interrupted.returncode == INTERRUPTED_EXIT_CODE, interrupted.stderr[-3000:]
    fold = model_folder(pipeline, trainer) / "fold_0"
    assert (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").exists()
    train(pipeline, trainer, "--c")
    assert snapshot(teacher_folder) == before, "nothing may be written into the teacher's folder"

    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert log.count("Teacher parameters:") == 2 and "student/teacher ratio: 0.25" in log
    assert f"{STOP_AFTER_EPOCH_ENV}=1: stopping as an interrupted run would" in log
    assert log.count("distillation terms: flfd_unified") == 2  # one line per epoch, across the resume
    assert (fold / "kd_progress.png").stat().st_size > 0
    record = json.loads((fold / "hlfd_teacher.json").read_text())
    assert record["teacher"]["checkpoint_name"] == "checkpoint_final.pth"
    assert record["spec"]["model_folder"] == str(teacher_folder)  # nnU-Net's default layout, found again by --c
    assert "(chosen by: default)" in log and record["spec"]["source"].startswith("recorded in")

    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    assert checkpoint["distillation"]["teacher"]["sha256"] == record["teacher"]["sha256"]
    assert checkpoint["distillation"]["adapters"] is None
    for key in ("kd_flfd_unified", "kd_flfd_individual", "kd_plfd_unified", "kd_plfd_individual", "kd_total"):
        values = checkpoint["logging"][key]
        assert len(values) == 2 and all(v == v and v > 0 for v in values)

    # stock nnU-Net rebuilds exactly the student from the results plans.json (strict load)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(str(fold.parent / "plans.json"))
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration(CONFIG), 1, 3, False)
    net.load_state_dict(checkpoint["network_weights"])

    # predicting never needs the teacher: point the teacher variable at nothing
    env = dict(pipeline, nnUNet_hlfd_teacher=str(tmp_path / "no_teacher_here"))
    predict(env, trainer, tmp_path / "pred")
    # the deploy bundle predicts the same (3D, labels): nnunet_hlfd export + predict on ONNX Runtime
    images = Path(pipeline["nnUNet_raw"]) / DATASET / "imagesTs"
    assert_bundle_predicts_like(fold.parent, images, tmp_path / "pred", tmp_path)
    # nor does validating the finished student again (nnUNetv2_train --val, in this process)
    (fold / "validation" / "summary.json").unlink()
    train_in_process(env, trainer, validation_only=True)
    assert (fold / "validation" / "summary.json").is_file()
    # training it again without --c is refused before anything is touched
    final = (fold / "checkpoint_final.pth").read_bytes()
    with pytest.raises(OptionError, match="holds a finished student"):
        train_in_process(pipeline, trainer)
    assert (fold / "checkpoint_final.pth").read_bytes() == final
    summary = evaluate(pipeline, trainer, tmp_path / "pred")
    assert {str(k) for k in summary["metric_per_case"][0]["metrics"]} == {"1", "2"}
    assert all(0.0 <= m["Dice"] <= 1.0 for m in summary["metric_per_case"][0]["metrics"].values())


def test_adapters_are_saved_and_resume_uses_the_recorded_teacher(pipeline, tmp_path, monkeypatch):
    trainer = "nnUNetTrainerHLFD_adapters"
    copy_of_teacher = tmp_path / f"{TEACHER}__nnUNetPlans__{CONFIG}"
    shutil.copytree(model_folder(pipeline, TEACHER), copy_of_teacher)
    env = dict(pipeline, nnUNet_hlfd_teacher=str(copy_of_teacher))
    train_in_process(env, trainer)  # the first run: in this process (the resume below goes through the CLI)
    fold = model_folder(pipeline, trainer) / "fold_0"
    record = json.loads((fold / "hlfd_teacher.json").read_text())
    assert record["spec"]["model_folder"] == str(copy_of_teacher)
    assert "nnUNet_hlfd_teacher" in record["spec"]["source"]
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "trainable adapter parameters: 0" not in log and "trainable adapter parameters:" in log

    interrupt_after_first_epoch(fold)
    saved = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["distillation"]
    assert saved["adapters"] and all(k.startswith("heads.") for k in saved["adapters"])

    # --c with another teacher (another checkpoint) requested: refused, nothing changed
    another = tmp_path / "another_teacher" / f"{TEACHER}__nnUNetPlans__{CONFIG}"
    shutil.copytree(copy_of_teacher, another)
    perturb_weights(another / "fold_0" / "checkpoint_final.pth")
    latest = (fold / "checkpoint_latest.pth").read_bytes()
    with pytest.raises(OptionError, match="This run was started with the teacher"):
        train_in_process(dict(pipeline, nnUNet_hlfd_teacher=str(another)), trainer, continue_training=True)
    assert (fold / "checkpoint_latest.pth").read_bytes() == latest

    # the adapters come back exactly (load the checkpoint into a fresh trainer)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(key, pipeline[key])
    monkeypatch.delenv("nnUNet_hlfd_teacher", raising=False)
    from nnunetv2.run.run_training import get_trainer_from_args

    resumed = get_trainer_from_args(
        str(DATASET_ID), CONFIG, 0, trainer, continue_training=True, device=torch.device("cpu")
    )
    resumed.load_checkpoint(str(fold / "checkpoint_latest.pth"))
    state = resumed.distiller.adapters.state_dict()
    assert state.keys() == saved["adapters"].keys()
    assert all(torch.equal(state[k].cpu(), saved["adapters"][k]) for k in state)
    assert resumed.current_epoch == 1 and len(resumed.logger.local_logger.my_fantastic_logging["kd_total"]) == 1
    del resumed

    # the teacher moves (a remounted disk): --c names the recorded place; pointed at the new one, the same
    # checkpoint (same sha256) resumes through the CLI and finishes epoch 1, and the new place is recorded
    moved = tmp_path / "new_disk" / copy_of_teacher.name
    moved.parent.mkdir()
    copy_of_teacher.rename(moved)
    with pytest.raises(TeacherNotFoundError, match=f"is gone: {re.escape(str(copy_of_teacher))}"):
        train_in_process(pipeline, trainer, continue_training=True)
    train(dict(pipeline, nnUNet_hlfd_teacher=str(moved)), trainer, "--c")
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and len(final["logging"]["kd_total"]) == 2
    assert final["distillation"]["teacher"]["model_folder"] == str(moved)
    assert json.loads((fold / "hlfd_teacher.json").read_text())["spec"]["model_folder"] == str(moved)
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"the same checkpoint as recorded at {copy_of_teacher}/fold_0/checkpoint_final.pth, moved" in log

    # a teacher that changed since: resuming is refused
    interrupt_after_first_epoch(fold)
    perturb_weights(moved / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(TeacherMismatchError, match="has changed since this student was trained from it"):
        train_in_process(dict(pipeline, nnUNet_hlfd_teacher=str(moved)), trainer, continue_training=True)
