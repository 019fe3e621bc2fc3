"""Every refusal of a teacher happens in the trainer's constructor, before nnU-Net writes anything."""

import copy
import json
import re
import shutil
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


@pytest.mark.parametrize(
    "options, message",
    [
        ({"width": "half"}, "\"width\": 'half' is not valid: a number in (0, 1]"),
        ({"width": None}, '"width": None is not valid: a number in (0, 1]'),
        ({"width": 1.5}, '"width": 1.5 is not valid'),
        ({"n_conv_per_stage": 0}, '"n_conv_per_stage": 0 is not valid: null (as the teacher), a whole number ≥ 1'),
        ({"alpha": -1}, '"alpha": -1.0 is not valid: a loss weight ≥ 0'),
        ({"unified_weight": -0.5}, '"unified_weight": -0.5 is not valid: a loss weight ≥ 0'),
        ({"temperature": 0}, '"temperature": 0.0 is not valid: a number > 0'),
        ({"temperature": "4"}, "\"temperature\": '4' is not valid: a finite number"),
        ({"beta": None}, '"beta": None is not valid: a finite number'),
        ({"plfd_heads": "foo"}, "plfd_heads must be one of ('deep_supervision', 'adapters'), got 'foo'"),
        ({"rampup_fraction": 1}, "rampup_fraction must be in [0, 1), got 1.0"),
        ({"teacher_trainer": ""}, "\"teacher_trainer\": '' is not valid: a non-empty string"),
    ],
)
def test_bad_option_values_are_refused_before_anything_is_written(env, options, message):
    """Each value names its plans-block key, the value and what is valid; `alpha: -1` used to train."""
    write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    plans = tiny_plans()
    plans["configurations"]["3d_fullres"]["hlfd"] = options
    refuse(env, OptionError, re.escape(message), plans=plans)


def test_a_teacher_plans_file_that_is_not_json_is_named(env):
    model = write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    (model / "plans.json").write_text('{"configurations": ')  # cut by a full disk
    refuse(env, TeacherNotFoundError, re.escape(f"The teacher's {model / 'plans.json'} is not valid JSON"))


def test_a_configuration_the_plans_do_not_have_is_named_by_every_trainer(env):
    from nnunet_hlfd.trainers import nnUNetTrainerHLFDTeacher, nnUNetTrainerStudent

    write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    for trainer in (nnUNetTrainerHLFD, nnUNetTrainerStudent, nnUNetTrainerHLFDTeacher):
        with pytest.raises(RuntimeError, match=re.escape("configuration 2d not found in plans. Available configu")):
            trainer(tiny_plans(), "2d", 0, copy.deepcopy(TINY_DATASET_JSON), torch.device("cpu"))


def test_checkpoints_are_written_whole_or_not_at_all(env, tmp_path, monkeypatch):
    """A kill after nnU-Net's part of the checkpoint (before the distillation state is in) leaves the previous
    complete checkpoint, not one without adapters that --c would refuse."""
    write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    data = tmp_path / "preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    (data / "case.b2nd").touch()  # initialize() only asks for the file format; no data is read
    trainer = make_student()
    trainer.initialize()
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    complete = path.read_bytes()
    state = torch.load(path, map_location="cpu", weights_only=False)["distillation"]
    assert state["teacher"]["sha256"] == trainer.teacher_models[0].sha256

    save, calls = torch.save, []

    def killed_after_the_first_write(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_after_the_first_write)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(str(path))
    assert path.read_bytes() == complete
    assert not list(tmp_path.glob(".partial*"))


def record_teacher(results: Path, model_folder: str, sha256: str) -> None:
    """hlfd_teacher.json as a distillation run writes it, for a teacher once at ``model_folder``."""
    fold_folder = student_folder(results) / "fold_0"
    fold_folder.mkdir(parents=True)
    spec = {"model_folder": model_folder, "fold": "0", "checkpoint_name": "checkpoint_final.pth", "source": "default"}
    entry = {"spec": spec, "teacher": {**spec, "sha256": sha256}}
    (fold_folder / "hlfd_teacher.json").write_text(json.dumps({**entry, "teachers": [entry]}))


def test_a_moved_teacher_with_the_recorded_checkpoint_resumes(env, monkeypatch):
    from nnunet_hlfd.teacher import file_sha256

    model = write_teacher(env, tiny_plans(), TINY_DATASET_JSON, folder="MyTeacher__nnUNetPlans__3d_fullres")
    old_place = "/mnt/old_disk/nnUNet_results/Dataset990_HLFDSynthetic/MyTeacher__nnUNetPlans__3d_fullres"
    record_teacher(env, old_place, file_sha256(model / "fold_0" / "checkpoint_final.pth"))
    # not pointed at: the recorded place is named, and how to point at the new one
    before = snapshot(env)
    with pytest.raises(TeacherNotFoundError, match=r"is gone: /mnt/old_disk/.*point nnUNet_hlfd_teacher at its new"):
        make_student(continue_training=True)
    assert snapshot(env) == before
    monkeypatch.setenv("nnUNet_hlfd_teacher", str(model))
    trainer = make_student(continue_training=True)
    assert trainer.teacher_spec.model_folder == str(model)
    assert f"the same checkpoint as recorded at {old_place}/fold_0/checkpoint_final.pth, moved" in (
        trainer.teacher_spec.source
    )


def test_a_teacher_at_a_new_place_with_another_checkpoint_is_refused(env, monkeypatch):
    model = write_teacher(env, tiny_plans(), TINY_DATASET_JSON, folder="MyTeacher__nnUNetPlans__3d_fullres")
    record_teacher(env, "/mnt/old_disk/teacher", "0" * 64)
    monkeypatch.setenv("nnUNet_hlfd_teacher", str(model))
    before = snapshot(env)
    with pytest.raises(OptionError, match="its checkpoint is another one"):
        make_student(continue_training=True)
    assert snapshot(env) == before


def test_a_finished_student_validates_without_its_teacher_and_is_not_retrained_by_accident(env, tmp_path, monkeypatch):
    from batchgenerators.utilities.file_and_folder_operations import save_json

    from nnunet_hlfd.runtime import OVERWRITE_ENV

    teacher = write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    data = tmp_path / "preprocessed" / DATASET / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True)
    (data / "case.b2nd").touch()  # initialize() only asks for the file format; no data is read
    trained = make_student()
    trained.initialize()
    fold = student_folder(env) / "fold_0"
    trained.save_checkpoint(str(fold / "checkpoint_final.pth"))
    save_json(trained.plans_manager.plans, str(fold.parent / "plans.json"))  # as nnU-Net's on_train_start does
    weights = {k: v.clone() for k, v in trained.network.state_dict().items()}
    del trained
    shutil.rmtree(teacher)  # the teacher is gone (moved, deleted, another machine)

    # nnUNetv2_train --val: the recorded student plan, no teacher, the student's weights
    validating = make_student()
    assert validating.teacher_models == [] and validating.configuration_manager.network_arch_init_kwargs[
        "features_per_stage"
    ] == [4, 8, 16, 32]
    validating.load_checkpoint(str(fold / "checkpoint_final.pth"))  # initializes first, as nnU-Net's --val does
    assert all(torch.equal(validating.network.state_dict()[k], v) for k, v in weights.items())
    # nnUNetv2_train without --c over it: refused before anything of it is touched
    before = snapshot(fold)
    with pytest.raises(OptionError, match=r"holds a finished student .*add --val.*nnUNet_hlfd_overwrite=1"):
        validating.on_train_start()
    assert snapshot(fold) == before
    # asked for: the run is an ordinary new training, which needs its teacher
    monkeypatch.setenv(OVERWRITE_ENV, "1")
    with pytest.raises(TeacherNotFoundError):
        make_student()


def test_a_planned_schedule_is_followed_checked_and_required_by_the_teacher_trainer(env):
    """The plans' "hlfd_schedule" block replaces a trainer class per schedule: its values are checked before
    nnU-Net writes anything, and nnUNetTrainerHLFDTeacher refuses plans without one."""
    from nnunet_hlfd.trainers import nnUNetTrainerHLFDTeacher

    write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    plans = tiny_plans()
    schedule = {"epochs": 3, "iterations": 2, "val_iterations": 1, "mirroring": False}
    plans["configurations"]["3d_fullres"]["hlfd_schedule"] = schedule
    student = make_student(nnUNetTrainerStudent, plans=plans)
    assert (student.num_epochs, student.num_iterations_per_epoch, student.num_val_iterations_per_epoch) == (3, 2, 1)
    assert student.save_every == 1 and student.schedule["test_time_mirroring"] is False  # as mirroring
    assert make_student(nnUNetTrainerStudent).num_epochs == 1000  # no block: nnU-Net's own schedule
    for bad, message in [
        ({**schedule, "epochs": 0}, '"epochs": 0 is not a whole number ≥ 1'),
        ({**schedule, "iterations": 2.5}, '"iterations": 2.5 is not a whole number'),
        ({**schedule, "mirroring": "yes"}, "\"mirroring\": 'yes' is not true or false"),
        ({**schedule, "epoch": 3}, "unknown keys \\['epoch'\\]"),
        ({k: v for k, v in schedule.items() if k != "mirroring"}, "missing keys \\['mirroring'\\]"),
        ({**schedule, "seed": "0"}, "\"seed\": '0' is not a whole number"),
    ]:
        plans["configurations"]["3d_fullres"]["hlfd_schedule"] = bad
        with pytest.raises(OptionError, match=message):
            make_student(nnUNetTrainerStudent, plans=plans)
    with pytest.raises(OptionError, match='has no "hlfd_schedule" block: nnUNetTrainerHLFDTeacher follows'):
        nnUNetTrainerHLFDTeacher(tiny_plans(), "3d_fullres", 0, copy.deepcopy(TINY_DATASET_JSON), torch.device("cpu"))


def test_fold_ensemble_student_learns_from_every_trained_fold_on_all(env, monkeypatch):
    """nnUNetTrainerFoldEnsembleKD: the teachers are the teacher model's trained cross-validation folds (not 'all',
    not an unfinished fold); at least two, and the student on 'all' only."""
    from nnunet_hlfd.trainers import nnUNetTrainerFoldEnsembleKD

    monkeypatch.delenv("nnUNet_hlfd_teachers", raising=False)
    write_teacher(env, tiny_plans(), TINY_DATASET_JSON)
    refuse(env, OptionError, r"at least two trained teacher folds.*found \['0'\]", trainer=nnUNetTrainerFoldEnsembleKD,
           fold="all")  # fmt: skip
    for fold in ("1", "3", "all"):
        write_teacher(env, tiny_plans(), TINY_DATASET_JSON, fold=fold, init_fold=fold, folder=f"{TEACHER_DIR}_{fold}")
        shutil.copytree(
            env / DATASET / f"{TEACHER_DIR}_{fold}" / f"fold_{fold}", env / DATASET / TEACHER_DIR / f"fold_{fold}"
        )
    (env / DATASET / TEACHER_DIR / "fold_2").mkdir()  # started, not finished: no checkpoint_final.pth
    trainer = make_student(nnUNetTrainerFoldEnsembleKD, fold="all")
    assert [spec.fold for spec in trainer.teacher_specs] == ["0", "1", "3"]
    assert all(spec.source.startswith("fold ensemble of") for spec in trainer.teacher_specs)
    assert trainer.distiller.method.config.combination == "mean" and trainer.distiller.method.config.temperature == 1
    refuse(env, OptionError, "run it with fold 'all', not 0", trainer=nnUNetTrainerFoldEnsembleKD, fold=0)
