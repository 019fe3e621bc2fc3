"""Finding, checking and loading the frozen nnU-Net teacher. Nothing here ever writes to its folder."""

from nnunet_hlfd.teacher.checks import check_teacher
from nnunet_hlfd.teacher.load import Teacher, file_sha256, read_teacher, read_teacher_json
from nnunet_hlfd.teacher.locate import TEACHER_ENV, TeacherSpec, default_teacher_spec, teacher_spec_from_path

__all__ = [
    "TEACHER_ENV",
    "Teacher",
    "TeacherSpec",
    "check_teacher",
    "default_teacher_spec",
    "file_sha256",
    "read_teacher",
    "read_teacher_json",
    "teacher_spec_from_path",
]
