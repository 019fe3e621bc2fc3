"""A teacher's place: a checkpoint in an nnU-Net results folder, and how a path given by the user names one."""

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from nnunet_hlfd.errors import TeacherNotFoundError


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher checkpoint inside an nnU-Net results folder ``<Trainer>__<Plans>__<Configuration>``."""

    model_folder: str
    fold: str
    checkpoint_name: str = "checkpoint_final.pth"
    source: str = "default"  # how it was chosen: default, plans, environment or recorded

    @property
    def fold_folder(self) -> Path:
        return Path(self.model_folder) / f"fold_{self.fold}"

    @property
    def checkpoint_path(self) -> Path:
        return self.fold_folder / self.checkpoint_name

    def describe(self) -> str:
        return f"{self.checkpoint_path} (chosen by: {self.source})"

    def as_record(self) -> dict:
        return asdict(self)


def teacher_spec_from_path(path: str, student_fold, checkpoint_name: str, source: str) -> TeacherSpec:
    """Accept a results model folder, one of its ``fold_X`` folders or a checkpoint file inside one."""
    p = Path(os.path.expanduser(path)).resolve()
    if p.suffix == ".pth":
        checkpoint_name, p = p.name, p.parent
    if p.name.startswith("fold_"):
        return TeacherSpec(str(p.parent), p.name[len("fold_") :], checkpoint_name, source)
    if not p.exists():
        raise TeacherNotFoundError(
            f"The teacher path {path!r} (from {source}) does not exist. Point it at an nnU-Net results folder "
            "such as .../nnUNet_results/DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__3d_fullres, one of its "
            "fold_X folders, or a checkpoint file inside one."
        )
    return TeacherSpec(str(p), str(student_fold), checkpoint_name, source)
