"""The student plan: the teacher's configuration with fewer features (and optionally convolutions) per stage."""

from nnunet_hlfd.planning.student import (
    SUPPORTED_ARCHITECTURES,
    check_stage_alignment,
    derive_student_architecture,
    student_configuration,
)

__all__ = ["SUPPORTED_ARCHITECTURES", "check_stage_alignment", "derive_student_architecture", "student_configuration"]
