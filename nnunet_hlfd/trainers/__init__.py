"""nnU-Net trainers of this package, one small class per variant, grouped by concern:

- :mod:`.planned_schedule`: ``nnUNetTrainerHLFDTeacher`` (stock nnU-Net with the plans' schedule);
- :mod:`.student`: the student plan and the student-alone baselines;
- :mod:`.hlfd`: HLFD and its option variants; :mod:`.baselines`: the KD baselines and HLFD's ablations;
- :mod:`.multi_teacher`, :mod:`.contrastive`: the extensions.

nnU-Net finds them through the shim folder (see nnunet_hlfd.ext_path), which re-exports this module's ``__all__``.
"""

from nnunet_hlfd.trainers import baselines, contrastive, hlfd, multi_teacher, planned_schedule, student
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation

TRAINER_MODULES = (planned_schedule, student, hlfd, baselines, multi_teacher, contrastive)
TRAINERS: dict[str, type] = {"nnUNetTrainerDistillation": nnUNetTrainerDistillation}
for _module in TRAINER_MODULES:
    # the classes each module defines (not those it imports, such as nnU-Net's own nnUNetTrainer)
    TRAINERS.update(
        {
            name: obj
            for name, obj in vars(_module).items()
            if name.startswith("nnUNetTrainer") and isinstance(obj, type) and obj.__module__ == _module.__name__
        }
    )
globals().update(TRAINERS)  # importable as nnunet_hlfd.trainers.<name>, as the shim re-exports them
__all__ = sorted(TRAINERS)
