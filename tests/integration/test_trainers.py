"""Every trainer of the package through nnU-Net's own training code, in this process, on the shared tiny 3D dataset:
``get_trainer_from_args``, ``maybe_load_checkpoint`` and ``run_training`` as ``nnUNetv2_train`` calls them (one
epoch), the checkpoint read back into a fresh trainer as ``--c`` reads it, and a test case predicted with nnU-Net's
predictor. One trainer is stopped by the harness's deadline and resumed.

A subprocess would add nothing here but nnU-Net's start-up (about 7 s a command): the command line itself, with an
interruption and ``--c``, is covered by the chains of test_cli_end_to_end.py, test_cli_regions_2d.py, test_demo.py and
the benchmark's smoke run.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIG, DATASET, DATASET_ID, TEACHER, model_folder, nnunet_variables, train_in_process

from nnunet_hlfd.runtime import (
    INTERRUPTED_EXIT_CODE,
    STOP_AFTER_EPOCH_ENV,
    STOP_AFTER_TIME_ENV,
    TEACHERS_ENV,
)
from nnunet_hlfd.splits import TRAINING_CASES_FILE
from nnunet_hlfd.trainers import TRAINERS
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation

# run by one test process (pytest -n 2 --dist loadgroup), which builds the shared pipeline once
pytestmark = pytest.mark.xdist_group("pipeline")


COVERED_ELSEWHERE = {
    "nnUNetTrainerHLFDTeacher",  # the teacher of every test
    "nnUNetTrainerDistillation",  # the base class: no method
    "nnUNetTrainerMultiTeacher_confidence",  # test_demo.py, with two limit-trained teachers through the CLI
}
STUDENTS = sorted(set(TRAINERS) - COVERED_ELSEWHERE)
WITH_ADAPTERS = {
    "nnUNetTrainerFitNets",
    "nnUNetTrainerHLFD_adapters",
    "nnUNetTrainerHLFD_concatenated_feedback",
    "nnUNetTrainerMultiScaleContrastive",
    "nnUNetTrainerMultiScaleContrastive_f050",
}
PLANS = "nnUNetPlansInProcess"  # a copy of the shared plans with a one-epoch schedule
ONE_EPOCH = {"epochs": 1, "iterations": 2, "val_iterations": 1, "mirroring": False}


@pytest.fixture(scope="module")
def env(pipeline, tmp_path_factory) -> dict:
    """The shared dataset's nnU-Net folders with results of their own (the CLI chains train some of the same
    trainers), holding copies of the teacher for both plans; the multi-teacher trainer is given that one teacher
    (its default, the teacher folds of a limit-trained split, is run in test_demo.py)."""
    root = tmp_path_factory.mktemp("results_in_process")
    preprocessed = Path(pipeline["nnUNet_preprocessed"]) / DATASET
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["plans_name"] = PLANS
    plans["configurations"][CONFIG]["hlfd_schedule"] = ONE_EPOCH
    (preprocessed / f"{PLANS}.json").write_text(json.dumps(plans))
    env = {**pipeline, "nnUNet_results": str(root)}
    for name in ("nnUNetPlans", PLANS):
        shutil.copytree(model_folder(pipeline, TEACHER), model_folder(env, TEACHER, name))
    return {**env, TEACHERS_ENV: str(model_folder(env, TEACHER, PLANS) / "fold_0")}


def train(env: dict, trainer: str, plans: str = PLANS, continue_training: bool = False, **stop: str):
    with pytest.MonkeyPatch.context() as patch:
        for key in (STOP_AFTER_EPOCH_ENV, STOP_AFTER_TIME_ENV):
            patch.delenv(key, raising=False)
        for key, value in stop.items():
            patch.setenv(key, value)
        return train_in_process(env, trainer, continue_training, plans)


def read_back(env: dict, trainer: str):
    """A fresh trainer with the final checkpoint loaded, as --c (or --val) loads it."""
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    with nnunet_variables(env):
        fresh = get_trainer_from_args(str(DATASET_ID), CONFIG, 0, trainer, PLANS, True, device=torch.device("cpu"))
        maybe_load_checkpoint(fresh, True, False)
    return fresh


def predict_one_case(model: Path, raw: Path) -> np.ndarray:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_hlfd.deploy.trained import load_predictor

    predictor = load_predictor(model, 0, "checkpoint_final.pth", torch.device("cpu"))
    image = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    data, properties = SimpleITKIO().read_images([str(image)])
    return predictor.predict_single_npy_array(data, properties)


@pytest.mark.parametrize("name", STUDENTS)
def test_trainer_trains_saves_loads_and_predicts(pipeline, env, name):
    fold = model_folder(env, name, PLANS) / "fold_0"
    distills = issubclass(TRAINERS[name], nnUNetTrainerDistillation)
    trained = train(env, name)
    saved = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert saved["current_epoch"] == 1
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))

    loaded = read_back(env, name)  # what --c would continue from: the same weights and distillation state
    assert loaded.current_epoch == 1
    weights = loaded.network.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in trained.network.state_dict().items())
    if distills and trained.distiller.adapters is not None:
        adapters = loaded.distiller.adapters.state_dict()
        assert adapters.keys() == saved["distillation"]["adapters"].keys()
        assert all(torch.equal(adapters[k], v) for k, v in saved["distillation"]["adapters"].items())

    segmentation = predict_one_case(fold.parent, Path(pipeline["nnUNet_raw"]) / DATASET)
    assert segmentation.shape == (16, 32, 32) and set(np.unique(segmentation)) <= {0, 1, 2}

    cases = fold / TRAINING_CASES_FILE
    assert cases.is_file() == name.endswith("_f050")
    if cases.is_file():  # half of the fold's training cases, the same ones when read back
        record = json.loads(cases.read_text())
        assert len(record["training_cases"]) == round(record["fold_training_cases"] / 2) >= 1
        split = json.loads((Path(pipeline["nnUNet_preprocessed"]) / DATASET / "splits_final.json").read_text())[0]
        assert set(record["training_cases"]) < set(split["train"])
        assert f"training on {len(record['training_cases'])} of the fold's" in log
        plans = json.loads((fold.parent / "plans.json").read_text())["configurations"][CONFIG]["hlfd"]
        assert plans["training_fraction"] == 0.5
    teacher = json.loads((model_folder(pipeline, TEACHER) / "plans.json").read_text())
    features = teacher["configurations"][CONFIG]["architecture"]["arch_kwargs"]["features_per_stage"]
    width = TRAINERS[name].width
    student = json.loads((fold.parent / "plans.json").read_text())["configurations"][CONFIG]["architecture"]
    assert student["arch_kwargs"]["features_per_stage"] == [max(1, round(f * width)) for f in features]
    if not distills:
        assert "distillation" not in saved and "Student parameters:" in log
        return
    kd = saved["logging"]["kd_total"]
    assert len(kd) == 1 and np.isfinite(kd[0]) and kd[0] > 0
    assert bool(saved["distillation"]["adapters"]) == (name in WITH_ADAPTERS)
    assert "trainable adapter parameters:" in log


def test_a_training_past_the_harness_deadline_stops_after_its_epoch_and_resumes(pipeline, env):
    """The benchmark harness's way of stopping: a deadline already past when epoch 0 ends (the two-epoch plans)."""
    name = "nnUNetTrainerMultiScaleContrastive"
    fold = model_folder(env, name) / "fold_0"
    with pytest.raises(SystemExit) as stopped:
        train(env, name, "nnUNetPlans", **{STOP_AFTER_TIME_ENV: "0"})
    assert stopped.value.code == INTERRUPTED_EXIT_CODE
    assert (fold / "checkpoint_latest.pth").is_file() and not (fold / "checkpoint_final.pth").exists()
    train(env, name, "nnUNetPlans", continue_training=True, **{STOP_AFTER_TIME_ENV: "0"})  # epoch 1 of this run
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and len(final["logging"]["kd_total"]) == 2
    assert all(np.isfinite(v) and v > 0 for v in final["logging"]["kd_total"])
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert log.count("past the deadline, stopping after epoch 1") == 1


def inheriting_plans(env: dict, name: str, epochs: int = 1, **options) -> str:
    """A copy of the one-epoch plans whose students start from the teacher's weights (the teacher stays the one of
    the shared plans)."""
    preprocessed = Path(env["nnUNet_preprocessed"]) / DATASET
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    configuration = plans["configurations"][CONFIG]
    configuration["hlfd"] = {**configuration["hlfd"], "init": "teacher", "teacher_plans": PLANS, **options}
    configuration["hlfd_schedule"] = {**ONE_EPOCH, "epochs": epochs}
    plans["plans_name"] = name
    (preprocessed / f"{name}.json").write_text(json.dumps(plans))
    return name


@pytest.mark.parametrize("name", ["nnUNetTrainerStudent", "nnUNetTrainerHLFD", "nnUNetTrainerMultiTeacher"])
def test_a_full_width_student_that_inherits_starts_as_its_teacher(env, name):
    """init "teacher" at width 1: before the first step the student is the teacher, weight for weight (the student
    alone loads the teacher for it; a KD trainer selects from its frozen teacher; multi-teacher from the first)."""
    from nnunetv2.run.run_training import get_trainer_from_args

    plans = inheriting_plans(env, "nnUNetPlansInheritFullWidth", width=1.0)
    with nnunet_variables(env):
        trainer = get_trainer_from_args(str(DATASET_ID), CONFIG, 0, name, plans, device=torch.device("cpu"))
        trainer.on_train_start()
    teacher = torch.load(model_folder(env, TEACHER, PLANS) / "fold_0" / "checkpoint_final.pth", weights_only=False)
    student = trainer.student_network().state_dict()
    assert student.keys() == teacher["network_weights"].keys()
    assert all(torch.equal(student[k], v) for k, v in teacher["network_weights"].items())
    assert trainer.inheritance_record["teacher"]["sha256"] == trainer.teacher_models[0].sha256


def test_an_inherited_student_records_its_teacher_and_resumes_from_its_own_checkpoint(pipeline, env, monkeypatch):
    from nnunet_hlfd.trainers import student as student_module
    from nnunet_hlfd.trainers.student import INHERITANCE_KEY

    name, plans = "nnUNetTrainerStudent", inheriting_plans(env, "nnUNetPlansInherit", epochs=2)
    fold = model_folder(env, name, plans) / "fold_0"
    with pytest.raises(SystemExit) as stopped:
        train(env, name, plans, **{STOP_AFTER_EPOCH_ENV: "1"})  # after epoch 0
    assert stopped.value.code == INTERRUPTED_EXIT_CODE
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    record = latest[INHERITANCE_KEY]
    assert record["importance"] == "l1" and record["teacher"]["sha256"]
    assert "Weight inheritance: the student starts from the weights of" in "".join(
        p.read_text() for p in fold.glob("training_log_*.txt")
    )
    # --c resumes from the student's own checkpoint: the teacher's weights are not selected again
    monkeypatch.setattr(student_module, "inherit_weights", lambda *a: pytest.fail("inherited again on --c"))
    resumed = train(env, name, plans, continue_training=True)
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and final[INHERITANCE_KEY] == record and resumed.resumed
    recorded = json.loads((fold.parent / "plans.json").read_text())["configurations"][CONFIG]["hlfd"]
    assert recorded["init"] == "teacher" and recorded["init_importance"] == "l1"
    assert Path(recorded["teacher_used"]["model_folder"]) == model_folder(env, TEACHER, PLANS)
    # prediction needs neither the teacher nor this package's record
    shutil.move(model_folder(env, TEACHER, PLANS), model_folder(env, TEACHER, PLANS).with_name("moved"))
    try:
        segmentation = predict_one_case(fold.parent, Path(pipeline["nnUNet_raw"]) / DATASET)
    finally:
        shutil.move(model_folder(env, TEACHER, PLANS).with_name("moved"), model_folder(env, TEACHER, PLANS))
    assert segmentation.shape == (16, 32, 32)


def test_start_weights_from_pretrained_weights_are_not_replaced_by_inheritance(env, tmp_path):
    """nnUNetv2_train -pretrained_weights loads its weights after initialize(): a student that would then inherit the
    teacher's is refused before training (its weights would be silently replaced); one from random weights keeps
    them."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_hlfd.errors import OptionError

    def started(plans: str):
        with nnunet_variables(env):
            trainer = get_trainer_from_args(
                str(DATASET_ID), CONFIG, 0, "nnUNetTrainerStudent", plans, device=torch.device("cpu")
            )
            trainer.initialize()
            own = {k: v + 1.0 if v.is_floating_point() else v for k, v in trainer.network.state_dict().items()}
            torch.save({"network_weights": own}, tmp_path / "pretrained.pth")
            load_pretrained_weights(trainer.network, str(tmp_path / "pretrained.pth"))  # as nnUNetv2_train does
            trainer.on_train_start()
            return trainer, own

    with pytest.raises(OptionError, match="-pretrained_weights"):
        started(inheriting_plans(env, "nnUNetPlansInheritPretrained"))
    trainer, own = started(PLANS)  # random init: nnU-Net's pretrained weights stay (the heads are not loaded)
    kept = trainer.student_network().state_dict()["encoder.stages.0.0.convs.0.conv.weight"]
    assert torch.equal(kept, own["encoder.stages.0.0.convs.0.conv.weight"])


def test_inheritance_options_are_checked_before_anything_is_written(env):
    from nnunet_hlfd.errors import OptionError

    for options, message in (({"init": "pretrained"}, '"init": \'pretrained\''),
                             ({"init_importance": "taylor"}, '"init_importance": \'taylor\'')):  # fmt: skip
        plans = inheriting_plans(env, "nnUNetPlansInheritBad", **options)
        with pytest.raises(OptionError, match=message):
            train(env, "nnUNetTrainerStudent", plans)
        assert not model_folder(env, "nnUNetTrainerStudent", plans).exists()
