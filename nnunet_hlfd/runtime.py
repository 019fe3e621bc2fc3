"""The runtime contract between the trainers and what drives them (the benchmark harness, the demo, the tests).

Everything a caller of ``nnUNetv2_train`` may set or read, in one place: the environment variables the trainers
read, the plans keys they read, the exit code of an interrupted run, the names of nnU-Net's results folders (built
with nnU-Net's own helper) and one way of running nnU-Net's commands. This module imports nothing of nnU-Net's
training code, so that any layer may use it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

from nnunet_hlfd.errors import (
    REFUSED_EXIT_CODE,  # noqa: F401  (part of the contract, defined where it is used)
    MissingCommandError,
)
from nnunet_hlfd.ext_path import EXT_TRAINER_DIR

# ---- environment variables read by the trainers -------------------------------------------------------------
TEACHER_ENV = "nnUNet_hlfd_teacher"  # the teacher: a results model folder, fold folder or checkpoint
TEACHERS_ENV = "nnUNet_hlfd_teachers"  # multi-teacher KD: such paths joined by os.pathsep
OVERWRITE_ENV = "nnUNet_hlfd_overwrite"  # 1: train a finished student again from scratch (without --c)
# With a planned schedule only: exit right after this epoch's checkpoint, as an interrupted run would (resume
# tests), or after the first epoch that ends past this Unix time (the benchmark harness's pieces).
STOP_AFTER_EPOCH_ENV = "nnUNet_hlfd_stop_after_epoch"
STOP_AFTER_TIME_ENV = "nnUNet_hlfd_stop_after_time"

# ---- exit codes ---------------------------------------------------------------------------------------------
INTERRUPTED_EXIT_CODE = 75  # stopped by one of the two variables above, checkpointed: resume with --c
# REFUSED_EXIT_CODE (2): a command of this package refused its input (errors.exit_with_message, which defines it)
STOPPED_EXIT_CODE = 3  # `nnunet_hlfd benchmark` stopped at its time limit: run the same command again to continue

# ---- keys of an nnU-Net plans configuration ------------------------------------------------------------------
PLANS_BLOCK = "hlfd"  # a student's options (width, teacher, the method's hyper-parameters)
SCHEDULE_KEY = "hlfd_schedule"  # epochs, iterations, val_iterations, mirroring[, test_time_mirroring, seed]
TEACHER_SCHEDULE_KEY = "hlfd_teacher_schedule"  # the teacher's, when it differs (nnUNetTrainerHLFDTeacher)

# ---- files the trainers write into a fold folder ------------------------------------------------------------
TEACHER_RECORD_FILE = "hlfd_teacher.json"  # which teacher(s) a student was trained from, with their sha256
FINAL_CHECKPOINT = "checkpoint_final.pth"


def model_folder(results: str | Path, dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """nnU-Net's results folder of one trained model: ``results/DatasetXXX_Name/<Trainer>__<Plans>__<Configuration>``
    (the name from nnU-Net's own helper)."""
    return Path(results) / dataset_name / convert_trainer_plans_config_to_identifier(trainer, plans, configuration)


def preprocessed_folder(dataset_name: str) -> Path:
    """nnU-Net's preprocessed folder of a dataset (``$nnUNet_preprocessed/DatasetXXX_Name``)."""
    return Path(nnUNet_preprocessed.get()) / dataset_name


def plan_schedule(configuration: dict, schedules: dict[str, dict], teacher_trainer: str) -> None:
    """Write schedules (``{SCHEDULE_KEY: {...}}``, optionally ``TEACHER_SCHEDULE_KEY``) into a plans configuration,
    and make ``teacher_trainer`` (trained with that schedule) every student's teacher."""
    configuration.update(schedules)
    configuration[PLANS_BLOCK] = {"teacher_trainer": teacher_trainer}


def nnunet_environment(root: Path) -> dict[str, str]:
    """This process's environment with nnU-Net's folders under ``root``, this package's trainers on nnU-Net's search
    path and settings for a small CPU machine (one worker; the caller sets more)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(
        nnUNet_raw=str(root / "nnUNet_raw"),
        nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
        nnUNet_results=str(root / "nnUNet_results"),
        nnUNet_extTrainer=EXT_TRAINER_DIR,
        nnUNet_n_proc_DA="1",  # planning crashes with 0; training switches to 0 (no augmentation workers)
        nnUNet_def_n_proc="1",
        nnUNet_compile="f",
        PYTHONUNBUFFERED="1",  # epochs appear as they pass
    )
    return env


def nnunet_command(name: str) -> str:
    """The executable of one of nnU-Net's commands (``nnUNetv2_train``, ...): the one beside this Python, installed
    with it (``VENV/bin/nnunet_hlfd`` runs without the environment on PATH), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise MissingCommandError(
            f"{name} is neither beside {sys.executable} nor on PATH: install nnunetv2 into this Python environment "
            "(pip install nnunetv2), or activate the environment that has it"
        )
    return found


def run_nnunet(args: list[str], env: dict, log: Path, append: bool = False) -> tuple[int, float]:
    """Run one of nnU-Net's commands (found by :func:`nnunet_command`) with its output into ``log`` (the command line
    first). Returns (exit code, seconds)."""
    args = [nnunet_command(args[0]), *args[1:]]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a" if append else "w") as f:
        f.write(f"$ {' '.join(args)}\n")
        f.flush()
        code = subprocess.run(args, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    return code, time.perf_counter() - start
