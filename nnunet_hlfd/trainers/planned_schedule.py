"""A schedule written into the plans instead of a trainer class per schedule.

Every trainer of this package follows nnU-Net's schedule, unless its plans configuration has a
``"hlfd_schedule"`` block: then that block's ``epochs``, ``iterations``, ``val_iterations`` and ``mirroring`` (mirror
augmentation in training), with optional ``test_time_mirroring`` (in validation; default: as ``mirroring``) and
``seed``. The benchmark harness, the demo and the tests write it there once, before anything trains, so the teacher
and every compared student share one schedule without a class of their own. The teacher is trained with
:class:`nnUNetTrainerHLFDTeacher` (stock nnU-Net plus this schedule), which follows ``"hlfd_teacher_schedule"`` when
the plans have one (a converged teacher trains longer than the students).

With a seed, every trainer of a fold starts from the same generator state (seed + fold) twice: before the network
is built (the same student initialisation for every method, whatever a method builds after it) and before the data
loaders start (the same patches, in the same order, when augmentation runs in this process).

With a planned schedule a run can also be stopped after a given epoch or past a deadline, checkpointed, exiting with
:data:`~nnunet_hlfd.runtime.INTERRUPTED_EXIT_CODE` (resume with ``--c``): see :mod:`nnunet_hlfd.runtime`.
"""

from __future__ import annotations

import os
import random
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_hlfd.errors import OptionError
from nnunet_hlfd.runtime import (
    INTERRUPTED_EXIT_CODE,
    SCHEDULE_KEY,
    STOP_AFTER_EPOCH_ENV,
    STOP_AFTER_TIME_ENV,
    TEACHER_SCHEDULE_KEY,
)
from nnunet_hlfd.trainers.option_checks import check_schedule


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and PyTorch's global generators: nnU-Net draws its network initialisation, patch
    locations and (with nnUNet_n_proc_DA=0, in this process) its augmentation from them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PlannedSchedule:
    """Mixin before an nnU-Net trainer: the schedule of the plans block (module docstring), if there is one."""

    schedule_key = SCHEDULE_KEY
    schedule_required = False  # True: refuse plans without a schedule block
    schedule: dict | None = None
    _started_at_epoch: int | None = None  # the first epoch this process trains (after --c: the checkpoint's)

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        # nnU-Net's own lookup: a configuration the plans do not have is refused with the ones they have
        self.schedule = self._read_schedule(configuration, PlansManager(plans).get_configuration(configuration))
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.schedule is not None:
            self.num_epochs = self.schedule["epochs"]
            self.num_iterations_per_epoch = self.schedule["iterations"]
            self.num_val_iterations_per_epoch = self.schedule["val_iterations"]
            self.save_every = 1  # checkpoint_latest.pth after every epoch, so that an interruption can be resumed

    def _read_schedule(self, name: str, configuration_manager) -> dict | None:
        configuration = configuration_manager.configuration
        schedule = configuration.get(self.schedule_key, configuration.get(SCHEDULE_KEY))
        if schedule is None:
            if self.schedule_required:
                raise OptionError(
                    f'The plans configuration {name} has no "{SCHEDULE_KEY}" block: {type(self).__name__} follows '
                    "the schedule written there (by the benchmark harness, the demo or you: see the README)."
                )
            return None
        check_schedule(schedule, name)
        tta = schedule.get("test_time_mirroring")
        return {**schedule, "test_time_mirroring": schedule["mirroring"] if tta is None else tta}

    def _seed_for_fold(self) -> None:
        if self.schedule is not None and self.schedule.get("seed") is not None:
            seed_everything(self.schedule["seed"] + (self.fold if isinstance(self.fold, int) else 1000))

    def initialize(self) -> None:
        self._seed_for_fold()
        super().initialize()

    def get_dataloaders(self):
        self._seed_for_fold()
        return super().get_dataloaders()

    def on_epoch_start(self) -> None:
        # Checked when the next epoch starts, so that every subclass's end of the previous epoch (checkpoint, logs,
        # plots) has run: the run stops exactly as one killed between two epochs would. Only after an epoch of this
        # run: a resumed run trains at least one.
        if self._started_at_epoch is None:
            self._started_at_epoch = self.current_epoch
        if self.schedule is not None and self.current_epoch > self._started_at_epoch:
            stop, deadline = os.environ.get(STOP_AFTER_EPOCH_ENV), os.environ.get(STOP_AFTER_TIME_ENV)
            if stop is not None and self.current_epoch == int(stop):
                self.print_to_log_file(f"{STOP_AFTER_EPOCH_ENV}={stop}: stopping as an interrupted run would")
                raise SystemExit(INTERRUPTED_EXIT_CODE)
            if deadline is not None and time.time() > float(deadline):
                self.print_to_log_file(
                    f"{STOP_AFTER_TIME_ENV}: past the deadline, stopping after epoch {self.current_epoch}"
                )
                raise SystemExit(INTERRUPTED_EXIT_CODE)
        super().on_epoch_start()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = (
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        if self.schedule is None:
            return rotation, dummy_2d, initial_patch_size, mirror_axes
        if not self.schedule["test_time_mirroring"]:
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes if self.schedule["mirroring"] else None


class nnUNetTrainerHLFDTeacher(PlannedSchedule, nnUNetTrainer):
    """nnU-Net's own trainer with the plans' schedule (``"hlfd_teacher_schedule"``, else ``"hlfd_schedule"``): the
    teacher of the benchmark, the demo and the tests. Refuses plans without a schedule (use nnUNetTrainer)."""

    schedule_key = TEACHER_SCHEDULE_KEY
    schedule_required = True
