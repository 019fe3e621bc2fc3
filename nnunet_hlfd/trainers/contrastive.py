"""Multi-scale contrastive KD trainers: ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr
nnUNetTrainerMultiScaleContrastive`` (or ``..._f050``, the student on half of the fold's training cases)."""

from nnunet_hlfd.methods.contrastive import MultiScaleContrastiveConfig, MultiScaleContrastiveKD
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation


class nnUNetTrainerMultiScaleContrastive(nnUNetTrainerDistillation):
    """Feature distillation at every encoder and decoder scale + supervised voxel-wise contrastive loss."""

    method_class = MultiScaleContrastiveKD
    config = MultiScaleContrastiveConfig()


class nnUNetTrainerMultiScaleContrastive_f050(nnUNetTrainerMultiScaleContrastive):
    """The paper's setting: the student trains on a seeded half of the fold's training cases (the teacher: all)."""

    training_fraction = 0.5
