"""nnU-Net trainers of this package. nnU-Net finds them through the shim folder (see nnunet_hlfd.ext_path)."""

from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation
from nnunet_hlfd.trainers.hlfd import nnUNetTrainerHLFD, nnUNetTrainerHLFD_adapters, nnUNetTrainerHLFD_w025
from nnunet_hlfd.trainers.schedules import (
    nnUNetTrainerHLFD_adapters_debug,
    nnUNetTrainerHLFD_debug,
    nnUNetTrainerHLFD_demo,
    nnUNetTrainerHLFDTeacher_debug,
    nnUNetTrainerHLFDTeacher_demo,
    nnUNetTrainerStudent_debug,
    nnUNetTrainerStudent_demo,
)
from nnunet_hlfd.trainers.student import nnUNetTrainerStudent, nnUNetTrainerStudent_w025

__all__ = [
    "nnUNetTrainerDistillation",
    "nnUNetTrainerHLFD",
    "nnUNetTrainerHLFDTeacher_debug",
    "nnUNetTrainerHLFDTeacher_demo",
    "nnUNetTrainerHLFD_adapters",
    "nnUNetTrainerHLFD_adapters_debug",
    "nnUNetTrainerHLFD_debug",
    "nnUNetTrainerHLFD_demo",
    "nnUNetTrainerHLFD_w025",
    "nnUNetTrainerStudent",
    "nnUNetTrainerStudent_debug",
    "nnUNetTrainerStudent_demo",
    "nnUNetTrainerStudent_w025",
]
