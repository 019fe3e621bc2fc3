"""Short schedules for tests and the demo: few epochs and iterations, no mirroring (8x faster validation).

Each class is a stock trainer with one schedule mixed in; the student trainers point at the teacher trained
with the same schedule.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_hlfd.trainers.hlfd import nnUNetTrainerHLFD, nnUNetTrainerHLFD_adapters
from nnunet_hlfd.trainers.student import nnUNetTrainerStudent


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


class nnUNetTrainerHLFD_debug(_Debug, nnUNetTrainerHLFD):
    pass


class nnUNetTrainerHLFD_adapters_debug(_Debug, nnUNetTrainerHLFD_adapters):
    pass


class nnUNetTrainerHLFDTeacher_demo(_Demo, nnUNetTrainer):
    pass


class nnUNetTrainerStudent_demo(_Demo, nnUNetTrainerStudent):
    pass


class nnUNetTrainerHLFD_demo(_Demo, nnUNetTrainerHLFD):
    pass
