"""Short schedules for tests and the demo (few epochs and iterations, no mirroring: 8x faster validation), and
the benchmark schedule, read from the plans so that the teacher and every compared trainer share it.

Each class is a stock trainer with one schedule mixed in; the student trainers point at the teacher trained
with the same schedule.
"""

import os
import random
import time

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_hlfd.errors import OptionError
from nnunet_hlfd.trainers import baselines, contrastive, hlfd, multi_teacher
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation
from nnunet_hlfd.trainers.hlfd import nnUNetTrainerHLFD
from nnunet_hlfd.trainers.student import nnUNetTrainerStudent

# Short and benchmark schedules only: exit right after this epoch's checkpoint, as an interrupted run would (resume
# tests), or after the first epoch that ends past this Unix time (the benchmark harness's pieces).
STOP_AFTER_EPOCH_ENV = "nnUNet_hlfd_stop_after_epoch"
STOP_AFTER_TIME_ENV = "nnUNet_hlfd_stop_after_time"
INTERRUPTED_EXIT_CODE = 75


class _ShortSchedule:
    epochs = 2
    iterations = 3
    val_iterations = 2
    mirroring = False  # mirror augmentation in training
    test_time_mirroring = False  # nnU-Net's mirrored test-time augmentation in validation (4x the work in 2D)

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        # nnU-Net's own lookup: a configuration the plans do not have is refused with the ones they have
        self._read_schedule(configuration, PlansManager(plans).get_configuration(configuration).configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = self.val_iterations
        self.save_every = 1  # checkpoint_latest.pth after every epoch, so that an interruption can be resumed

    def _read_schedule(self, name: str, configuration: dict) -> None:
        """The class attributes are the schedule; variants that take it from the plans override this."""

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        if self.current_epoch >= self.num_epochs:
            return
        stop, deadline = os.environ.get(STOP_AFTER_EPOCH_ENV), os.environ.get(STOP_AFTER_TIME_ENV)
        if stop is not None and self.current_epoch == int(stop):
            self.print_to_log_file(f"{STOP_AFTER_EPOCH_ENV}={stop}: stopping as an interrupted run would")
            raise SystemExit(INTERRUPTED_EXIT_CODE)
        if deadline is not None and time.time() > float(deadline):
            self.print_to_log_file(
                f"{STOP_AFTER_TIME_ENV}: past the deadline, stopping after epoch {self.current_epoch}"
            )
            raise SystemExit(INTERRUPTED_EXIT_CODE)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = (
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        )
        if not self.test_time_mirroring:
            self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, mirror_axes if self.mirroring else None


class _Debug(_ShortSchedule):
    """2 epochs x 3 iterations: checks that everything runs, teaches nothing."""

    teacher_trainer = "nnUNetTrainerHLFDTeacher_debug"


class _Demo(_ShortSchedule):
    """Long enough on 2 CPU cores for the demo's teacher to clearly beat chance."""

    epochs = 50
    iterations = 12
    val_iterations = 4
    teacher_trainer = "nnUNetTrainerHLFDTeacher_demo"


SCHEDULE_KEY = "hlfd_schedule"
TEACHER_SCHEDULE_KEY = "hlfd_teacher_schedule"


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and PyTorch's global generators: nnU-Net draws its network initialisation, patch
    locations and (with nnUNet_n_proc_DA=0, in this process) its augmentation from them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _PlannedSchedule(_ShortSchedule):
    """The schedule in the plans configuration's ``"hlfd_schedule"`` block (``epochs``, ``iterations``,
    ``val_iterations``, ``mirroring``, optional ``test_time_mirroring`` (default: as ``mirroring``) and ``seed``),
    written there by the benchmark harness: one schedule for
    every compared trainer, fixed before any of them trains. The teacher follows ``"hlfd_teacher_schedule"`` when
    the plans have one (a converged teacher trains longer than the students).

    With a seed, every row of a fold starts from the same generator state (seed + fold) twice: before the network
    is built (the same student initialisation for every row, whatever a method builds after it) and before the
    data loaders start (the same patches, in the same order, for every row when augmentation runs in this process).
    """

    teacher_trainer = "nnUNetTrainerHLFDTeacher_bench"
    schedule_key = SCHEDULE_KEY
    seed: int | None = None

    def _read_schedule(self, name: str, configuration: dict) -> None:
        schedule = configuration.get(self.schedule_key, configuration.get(SCHEDULE_KEY))
        if schedule is None:
            raise OptionError(
                f'The plans configuration {name} has no "{SCHEDULE_KEY}" block: the *_bench trainers follow '
                "the schedule the benchmark harness writes there (benchmarks/kits_benchmark.py)."
            )
        self.epochs, self.iterations = schedule["epochs"], schedule["iterations"]
        self.val_iterations, self.mirroring = schedule["val_iterations"], schedule["mirroring"]
        tta = schedule.get("test_time_mirroring")
        self.test_time_mirroring = self.mirroring if tta is None else tta
        self.seed = schedule.get("seed")

    def _seed_for_fold(self) -> None:
        if self.seed is not None:
            seed_everything(self.seed + (self.fold if isinstance(self.fold, int) else 1000))

    def initialize(self) -> None:
        self._seed_for_fold()
        super().initialize()

    def get_dataloaders(self):
        self._seed_for_fold()
        return super().get_dataloaders()


class nnUNetTrainerHLFDTeacher_debug(_Debug, nnUNetTrainer):
    pass


class nnUNetTrainerStudent_debug(_Debug, nnUNetTrainerStudent):
    pass


def _distillation_trainers() -> list[type]:
    found = [
        cls
        for module in (hlfd, baselines, multi_teacher, contrastive)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, nnUNetTrainerDistillation) and cls.__module__ == module.__name__
    ]
    return [cls for cls in found if not cls.__name__.endswith("_w025")]  # width variants need no own debug


def _with_schedule(trainer: type, schedule: type, suffix: str) -> type:
    return type(
        f"{trainer.__name__}_{suffix}", (schedule, trainer), {"__module__": __name__, "__doc__": trainer.__doc__}
    )


# nnUNetTrainerHLFD_debug, nnUNetTrainerLogitKD_debug, ...: every distillation trainer with the debug schedule
DEBUG_TRAINERS = {cls.__name__: cls for cls in (_with_schedule(t, _Debug, "debug") for t in _distillation_trainers())}
globals().update(DEBUG_TRAINERS)


class nnUNetTrainerHLFDTeacher_bench(_PlannedSchedule, nnUNetTrainer):
    schedule_key = TEACHER_SCHEDULE_KEY


class nnUNetTrainerStudent_bench(_PlannedSchedule, nnUNetTrainerStudent):
    pass


# ... and with the benchmark's planned schedule: nnUNetTrainerHLFD_bench, ...
BENCHMARK_TRAINERS = {
    cls.__name__: cls for cls in (_with_schedule(t, _PlannedSchedule, "bench") for t in _distillation_trainers())
}
globals().update(BENCHMARK_TRAINERS)


class nnUNetTrainerHLFDTeacher_demo(_Demo, nnUNetTrainer):
    pass


class nnUNetTrainerStudent_demo(_Demo, nnUNetTrainerStudent):
    pass


class nnUNetTrainerHLFD_demo(_Demo, nnUNetTrainerHLFD):
    pass
