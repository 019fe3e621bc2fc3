"""Every refusal of a teacher happens in the trainer's constructor, before nnU-Net writes anything."""

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import DATASET, TEACHER_DIR, TINY_DATASET_JSON, tiny_plans, write_teacher

from nnunet_hlfd.capture import StageLayoutError
from nnunet_hlfd.errors import OptionError, TeacherMismatchError, TeacherNotFoundError
from nnunet_hlfd.trainers import nnUNetTrainerHLFD, nnUNetTrainerStudent


@pytest.fixture
def env(tmp_path, monkeypatch):
    results, preprocessed = tmp_path / "results", tmp_path / "preprocessed"
    results.mkdir()
    preprocessed.mkdir()
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    monkeypatch.delenv("nnUNet_hlfd_teacher", raising=False)
    return results


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def make_student(trainer=nnUNetTrainerHLFD, plans=None, fold=0, continue_training=False):
    plans = copy.deepcopy(plans or tiny_plans())
    plans["continue_training"] = continue_training
    return trainer(plans, "3d_fullres", fold, copy.deepcopy(TINY_DATASET_JSON), torch.device("cpu"))


def student_folder(results: Path, trainer=nnUNetTrainerHLFD) -> Path:
    return results / DATASET / f"{trainer.__name__}__nnUNetPlans__3d_fullres"


def refuse(results, error, match, **kwargs):
    before = snapshot(results)
    with pytest.raises(error, match=match):
        make_student(**kwargs)
    assert snapshot(results) == before, "a refused set-up must not write anything"
    assert not student_folder(results).exists()


def test_matching_teacher_is_accepted_and_the_student_is_half_width(env):
    write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    trainer = make_student()
    arch = trainer.configuration_manager.network_arch_init_kwargs
    assert arch["features_per_stage"] == [4, 8, 16, 32]
    assert trainer.plans_manager.plans["configurations"]["3d_fullres"]["hlfd"]["teacher_used"]["source"] == "default"
    assert trainer.teacher_spec.checkpoint_path == env / DATASET / TEACHER_DIR / "fold_0" / "checkpoint_final.pth"


def test_missing_teacher(env):
    refuse(env, TeacherNotFoundError, r"No teacher found.*nnUNetv2_train")


def test_missing_teacher_checkpoint(env):
    model = write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    (model / "fold_0" / "checkpoint_final.pth").rename(model / "fold_0" / "checkpoint_best.pth")
    refuse(env, TeacherNotFoundError, r"No teacher checkpoint.*checkpoint_best.pth")


def test_corrupt_teacher_checkpoint(env):
    model = write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    ckpt = model / "fold_0" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a half-copied file
    refuse(env, TeacherNotFoundError, "cannot be read as an nnU-Net checkpoint")


def test_teacher_of_another_dataset(env):
    plans = tiny_plans()
    plans["dataset_name"] = "Dataset991_Other"
    write_teacher(env, plans, TINY_DATASET_JSON)
    refuse(env, TeacherMismatchError, "other dataset: the teacher was trained on Dataset991_Other")


def test_teacher_with_other_labels(env):
    labels = copy.deepcopy(TINY_DATASET_JSON)
    labels["labels"] = {"background": 0, "organ": 1}
    write_teacher(env, tiny_plans(), labels)
    refuse(env, TeacherMismatchError, "other labels/regions")


def test_teacher_with_regions_instead_of_labels(env):
    regions = copy.deepcopy(TINY_DATASET_JSON)
    regions["labels"] = {"background": 0, "organ_and_tumour": [1, 2], "tumour": 2}
    regions["regions_class_order"] = [1, 2]
    write_teacher(env, tiny_plans(), regions)
    refuse(env, TeacherMismatchError, "regions_class_order")


@pytest.mark.parametrize(
    "key,value",
    [
        ("data_identifier", "nnUNetPlans_3d_lowres"),
        ("spacing", [3.0, 0.8, 0.8]),
        ("normalization_schemes", ["ZScoreNormalization"]),
    ],
)
def test_teacher_with_other_preprocessing(env, key, value):
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"][key] = value
    write_teacher(env, plans, TINY_DATASET_JSON)
    refuse(env, TeacherMismatchError, f"other preprocessing: teacher {key}")


def test_teacher_with_other_intensity_statistics(env):
    plans = tiny_plans()
    plans["foreground_intensity_properties_per_channel"]["0"]["mean"] = 0.0
    write_teacher(env, plans, TINY_DATASET_JSON)
    refuse(env, TeacherMismatchError, "foreground_intensity_properties_per_channel")


def test_teacher_whose_stages_cannot_align(env):
    write_teacher(env, tiny_plans(n_stages=2), TINY_DATASET_JSON)
    refuse(env, StageLayoutError, "at least 3 stages")


def test_teacher_of_another_fold_is_fold_leakage(env, monkeypatch):
    model = write_teacher(env, tiny_plans(), TINY_DATASET_JSON, fold="1", init_fold=1)
    monkeypatch.setenv("nnUNet_hlfd_teacher", str(model / "fold_1"))
    refuse(env, TeacherMismatchError, "fold leakage: the teacher is fold 1, the student fold 0")


def test_teacher_trained_on_all_folds_is_fold_leakage(env):
    write_teacher(env, tiny_plans(), TINY_DATASET_JSON, fold="0", init_fold="all")
    refuse(env, TeacherMismatchError, "fold leakage")


def test_teacher_override_by_environment_and_by_plans(env, monkeypatch):
    model = write_teacher(env, tiny_plans(), TINY_DATASET_JSON, folder="MyTeacher__nnUNetPlans__3d_fullres")
    monkeypatch.setenv("nnUNet_hlfd_teacher", str(model))
    trainer = make_student()
    assert trainer.teacher_spec.model_folder == str(model)
    assert "environment variable" in trainer.teacher_spec.source
    monkeypatch.delenv("nnUNet_hlfd_teacher")
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["hlfd"] = {"teacher": str(model / "fold_0" / "checkpoint_final.pth")}
    trainer = make_student(plans=plans)
    assert trainer.teacher_spec.checkpoint_path == model / "fold_0" / "checkpoint_final.pth"
    assert "plans block" in trainer.teacher_spec.source


def test_plans_block_options_and_unknown_options(env):
    write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["hlfd"] = {"width": 0.25, "temperature": 2.0, "n_conv_per_stage": 1}
    trainer = make_student(plans=plans)
    assert trainer.configuration_manager.network_arch_init_kwargs["features_per_stage"] == [2, 4, 8, 16]
    assert trainer.configuration_manager.network_arch_init_kwargs["n_conv_per_stage"] == [1, 1, 1, 1]
    assert trainer.method.config.temperature == 2.0
    plans["configurations"]["3d_fullres"]["hlfd"] = {"temprature": 2.0}
    with pytest.raises(OptionError, match=r"Unknown option\(s\) \['temprature'\]"):
        make_student(plans=plans)


def test_resume_refuses_a_different_teacher_than_recorded(env, monkeypatch):
    write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    other = write_teacher(env, tiny_plans(), TINY_DATASET_JSON, folder="Other__nnUNetPlans__3d_fullres")
    fold_folder = student_folder(env) / "fold_0"
    fold_folder.mkdir(parents=True)
    spec = {
        "model_folder": str(env / DATASET / TEACHER_DIR),
        "fold": "0",
        "checkpoint_name": "checkpoint_final.pth",
        "source": "default",
    }
    (fold_folder / "hlfd_teacher.json").write_text(json.dumps({"spec": spec}))
    monkeypatch.setenv("nnUNet_hlfd_teacher", str(other))
    with pytest.raises(OptionError, match="This run was started with the teacher"):
        make_student(continue_training=True)
    monkeypatch.delenv("nnUNet_hlfd_teacher")
    trainer = make_student(continue_training=True)
    assert trainer.teacher_spec.source.startswith("recorded in")


def test_student_baseline_needs_no_teacher(env):
    trainer = make_student(trainer=nnUNetTrainerStudent)
    assert trainer.configuration_manager.network_arch_init_kwargs["features_per_stage"] == [4, 8, 16, 32]
    record = trainer.plans_manager.plans["configurations"]["3d_fullres"]["hlfd"]
    assert "own configuration" in record["derived_from"] and "teacher_used" not in record


def test_student_baseline_is_derived_from_an_existing_teacher_configuration(env):
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 64, 64]  # e.g. a teacher from larger plans
    plans["configurations"]["3d_fullres"]["batch_size"] = 4
    write_teacher(env, plans, TINY_DATASET_JSON)
    trainer = make_student(trainer=nnUNetTrainerStudent)
    assert trainer.configuration_manager.patch_size == [16, 64, 64] and trainer.configuration_manager.batch_size == 4
    assert trainer.plans_manager.plans["configurations"]["3d_fullres"]["hlfd"]["derived_from"].endswith("plans.json")
