"""Short schedules for tests and the demo: few epochs and iterations, no mirroring (8x faster validation).

Each class is a stock trainer with one schedule mixed in; the student trainers point at the teacher trained
with the same schedule.
"""

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_hlfd.trainers import baselines, contrastive, hlfd, multi_teacher
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation
from nnunet_hlfd.trainers.hlfd import nnUNetTrainerHLFD
from nnunet_hlfd.trainers.student import nnUNetTrainerStudent

# Debug schedules only: exit right after this epoch's checkpoint, as an interrupted run would (resume tests).
STOP_AFTER_EPOCH_ENV = "nnUNet_hlfd_stop_after_epoch"
INTERRUPTED_EXIT_CODE = 75


class _ShortSchedule:
    epochs = 2
    iterations = 3
    val_iterations = 2

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = self.val_iterations
        self.save_every = 1  # checkpoint_latest.pth after every epoch, so that an interruption can be resumed

    def on_epoch_end(self) -> None:
        super().on_epoch_end()
        stop = os.environ.get(STOP_AFTER_EPOCH_ENV)
        if stop is not None and self.current_epoch == int(stop) < self.num_epochs:
            self.print_to_log_file(f"{STOP_AFTER_EPOCH_ENV}={stop}: stopping as an interrupted run would")
            raise SystemExit(INTERRUPTED_EXIT_CODE)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None


class _Debug(_ShortSchedule):
    """2 epochs x 3 iterations: checks that everything runs, teaches nothing."""

    teacher_trainer = "nnUNetTrainerHLFDTeacher_debug"


class _Demo(_ShortSchedule):
    """Long enough on 2 CPU cores for the demo's teacher to clearly beat chance."""

    epochs = 50
    iterations = 12
    val_iterations = 4
    teacher_trainer = "nnUNetTrainerHLFDTeacher_demo"


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


def _debug_variant(trainer: type) -> type:
    return type(f"{trainer.__name__}_debug", (_Debug, trainer), {"__module__": __name__, "__doc__": trainer.__doc__})


# nnUNetTrainerHLFD_debug, nnUNetTrainerLogitKD_debug, ...: every distillation trainer with the debug schedule
DEBUG_TRAINERS = {cls.__name__: cls for cls in map(_debug_variant, _distillation_trainers())}
globals().update(DEBUG_TRAINERS)


class nnUNetTrainerHLFDTeacher_demo(_Demo, nnUNetTrainer):
    pass


class nnUNetTrainerStudent_demo(_Demo, nnUNetTrainerStudent):
    pass


class nnUNetTrainerHLFD_demo(_Demo, nnUNetTrainerHLFD):
    pass
