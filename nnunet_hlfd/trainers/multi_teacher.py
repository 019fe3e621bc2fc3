"""Multi-teacher KD trainers: ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerMultiTeacher``, and the
fold ensemble distilled into one student: ``nnUNetv2_train DATASET CONFIGURATION all -tr nnUNetTrainerFoldEnsembleKD``.

The teachers are, by default, the teacher folds that ``nnunet_hlfd split`` recorded in ``hlfd_splits.json``
(each trained with stock ``nnUNetv2_train`` on its own small subset), and the student trains on the student
fold. Any other mix of folds or subset models of the same dataset and preprocessing can be named with
``nnUNet_hlfd_teachers=PATH:PATH:...`` or the plans option ``"teachers"``. Every teacher is checked like a
single teacher, and the splits are checked for leakage: no teacher may have trained on a case the student
validates on.
"""

from nnunet_hlfd.methods.multi_teacher import MultiTeacherConfig, MultiTeacherKD
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation


class nnUNetTrainerMultiTeacher(nnUNetTrainerDistillation):
    """Several limit-trained teachers, mean-combined, into the half-width student (feature + KL + Lovász)."""

    method_class = MultiTeacherKD
    config = MultiTeacherConfig()
    many_teachers = True  # located and checked by nnunet_hlfd.teacher, leakage included
    teachers: tuple[str, ...] | None = None  # results model/fold folders or checkpoints; None: hlfd_splits.json
    extra_options = ("teachers",)


class nnUNetTrainerMultiTeacher_confidence(nnUNetTrainerMultiTeacher):
    """Multi-teacher KD with per-voxel confidence weighting of the teachers."""

    config = MultiTeacherConfig(combination="confidence")


class nnUNetTrainerFoldEnsembleKD(nnUNetTrainerMultiTeacher):
    """The 5-fold ensemble nnU-Net predicts with, distilled into one student trained on every case (fold 'all').

    The teachers are every trained fold of the teacher model; their probabilities are averaged at temperature 1,
    as ``nnUNetv2_predict -f 0 1 2 3 4`` averages them, so the KL target is the ensemble's own prediction. Leakage
    does not arise: the student has no validation cases of its own."""

    config = MultiTeacherConfig(combination="mean", temperature=1.0)
    fold_ensemble = True


class nnUNetTrainerFoldEnsembleKD_init(nnUNetTrainerFoldEnsembleKD):
    """The fold ensemble distilled into one student that starts from the first teacher fold's weights."""

    init = "teacher"
