"""nnU-Net trainers of this package. nnU-Net finds them through the shim folder (see nnunet_hlfd.ext_path)."""

from nnunet_hlfd.trainers import baselines, contrastive, hlfd, multi_teacher, schedules, student
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation


def _trainers(module) -> dict[str, type]:
    return {
        name: obj for name, obj in vars(module).items() if name.startswith("nnUNetTrainer") and isinstance(obj, type)
    }


TRAINERS = {
    "nnUNetTrainerDistillation": nnUNetTrainerDistillation,
    **_trainers(student),
    **_trainers(hlfd),
    **_trainers(baselines),
    **_trainers(multi_teacher),
    **_trainers(contrastive),
    **_trainers(schedules),
}
TRAINERS.pop("nnUNetTrainer", None)  # nnU-Net's own, imported by the schedules
globals().update(TRAINERS)
__all__ = sorted(TRAINERS)
