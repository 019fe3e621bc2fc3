"""Every KD baseline, HLFD ablation and extension trainer through nnU-Net's own CLI on the shared tiny 3D dataset:
train until an interruption after epoch 1, resume with ``--c`` to the end, predict with ``nnUNetv2_predict``.
A trainer that only changes its parent's options (same method, same data) is trained once, without the
interruption and prediction its parent already goes through.

The chains run two at a time (nnU-Net's start-up dominates on 2 cores); each trainer's outcome is then
checked on its own.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import DATASET, TEACHER, model_folder, predict, train

from nnunet_hlfd.splits import TRAINING_CASES_FILE
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation
from nnunet_hlfd.trainers.multi_teacher import TEACHERS_ENV
from nnunet_hlfd.trainers.schedules import (
    DEBUG_TRAINERS,
    INTERRUPTED_EXIT_CODE,
    STOP_AFTER_EPOCH_ENV,
    STOP_AFTER_TIME_ENV,
)

COVERED_ELSEWHERE = {
    "nnUNetTrainerHLFD_debug",  # test_cli_end_to_end.py
    "nnUNetTrainerHLFD_adapters_debug",
    "nnUNetTrainerMultiTeacher_confidence_debug",  # test_demo.py, with two limit-trained teachers
    "nnUNetTrainerMultiScaleContrastive_f050_debug",  # its method and its fraction are run by other trainers
}
TRAINERS = sorted(set(DEBUG_TRAINERS) - COVERED_ELSEWHERE)
WITH_ADAPTERS = {
    "nnUNetTrainerFitNets_debug",
    "nnUNetTrainerHLFD_concatenated_feedback_debug",
    "nnUNetTrainerMultiScaleContrastive_debug",
}


def environment(env: dict, trainer: str) -> dict:
    """The multi-teacher trainer is given the one teacher here (its default, the teacher folds of a limit-trained
    split, is run in test_demo.py)."""
    if trainer.startswith("nnUNetTrainerMultiTeacher"):
        return dict(env, **{TEACHERS_ENV: str(model_folder(env, TEACHER) / "fold_0")})
    return env


def option_variant(name: str) -> bool:
    """Whether this debug trainer's trainer only changes the options of a parent with the same method and data."""
    trainer = DEBUG_TRAINERS[name].__bases__[1]
    parent = trainer.__bases__[0]
    return (
        parent is not nnUNetTrainerDistillation
        and parent.method_class is trainer.method_class
        and parent.training_fraction == trainer.training_fraction
    )


STOPPED_BY_DEADLINE = "nnUNetTrainerMultiScaleContrastive_debug"  # the benchmark harness's way of stopping


def interruption(trainer: str) -> dict:
    """Stop after epoch 1: by epoch number, or (one trainer) by a deadline already past when epoch 1 ends."""
    return {STOP_AFTER_TIME_ENV: "0"} if trainer == STOPPED_BY_DEADLINE else {STOP_AFTER_EPOCH_ENV: "1"}


def train_interrupt_resume_predict(env: dict, trainer: str, out: Path) -> str:
    """Runs the chain; returns '' or what went wrong (so that one trainer's failure does not hide another's)."""
    if option_variant(trainer):
        trained = train(env, trainer, check=False)
        return "" if trained.returncode == 0 else f"training ended with {trained.returncode}:\n{trained.stderr[-2000:]}"
    interrupted = train(dict(env, **interruption(trainer)), trainer, check=False)
    if interrupted.returncode != INTERRUPTED_EXIT_CODE:
        return f"first run ended with {interrupted.returncode}:\n{interrupted.stderr[-2000:]}"
    fold = model_folder(env, trainer) / "fold_0"
    if not (fold / "checkpoint_latest.pth").is_file() or (fold / "checkpoint_final.pth").exists():
        return "the interrupted run left no checkpoint_latest.pth (or already a final one)"
    resumed = train(env, trainer, "--c", check=False)
    if resumed.returncode != 0:
        return f"--c ended with {resumed.returncode}:\n{resumed.stderr[-2000:]}"
    predict(env, trainer, out)
    return ""


@pytest.fixture(scope="module")
def chains(pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("predictions")
    with ThreadPoolExecutor(2) as pool:
        futures = {
            t: pool.submit(train_interrupt_resume_predict, environment(pipeline, t), t, out / t) for t in TRAINERS
        }
    return {t: f.result() if f.exception() is None else repr(f.exception()) for t, f in futures.items()}, out


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_trains_resumes_and_predicts(pipeline, chains, trainer):
    problems, out = chains
    assert problems[trainer] == ""
    fold = model_folder(pipeline, trainer) / "fold_0"
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    kd = final["logging"]["kd_total"]
    assert len(kd) == 2 and all(np.isfinite(v) and v > 0 for v in kd)  # one value per epoch, across the resume
    saved = final["distillation"]
    assert bool(saved["adapters"]) == (trainer in WITH_ADAPTERS)
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "trainable adapter parameters:" in log
    stopped = "past the deadline, stopping after epoch 1" if trainer == STOPPED_BY_DEADLINE else "=1: stopping"
    assert (stopped in log) != option_variant(trainer)
    cases = fold / TRAINING_CASES_FILE
    assert cases.is_file() == trainer.startswith("nnUNetTrainerHLFD_f050")
    if cases.is_file():  # half of the fold's training cases, the same ones after the resume
        record = json.loads(cases.read_text())
        assert len(record["training_cases"]) == round(record["fold_training_cases"] / 2) >= 1
        split = json.loads((Path(pipeline["nnUNet_preprocessed"]) / DATASET / "splits_final.json").read_text())[0]
        assert set(record["training_cases"]) < set(split["train"])
        assert log.count(f"training on {len(record['training_cases'])} of the fold's") >= 2
        plans = json.loads((fold.parent / "plans.json").read_text())["configurations"]["3d_fullres"]["hlfd"]
        assert plans["training_fraction"] == 0.5
    if option_variant(trainer):
        return
    predictions = sorted((out / trainer).glob("*.nii.gz"))
    assert len(predictions) == 2
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(predictions[0]))))) <= {0, 1, 2}
