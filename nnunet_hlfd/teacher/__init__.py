"""Finding, checking and loading the frozen nnU-Net teacher(s). Nothing here ever writes to a teacher's folder.

- :mod:`~nnunet_hlfd.teacher.locate`: a teacher's place (:class:`TeacherSpec`) from a path;
- :mod:`~nnunet_hlfd.teacher.resolve`: which teacher(s) a student learns from (recorded, requested, default);
- :mod:`~nnunet_hlfd.teacher.load`: its plans, dataset.json and weights, and the network rebuilt from them;
- :mod:`~nnunet_hlfd.teacher.checks` and :mod:`~nnunet_hlfd.teacher.leakage`: refusals of a teacher that cannot
  teach the student.
"""

from nnunet_hlfd.teacher.checks import check_teacher, read_and_check_teachers
from nnunet_hlfd.teacher.load import Teacher, file_sha256, read_teacher, read_teacher_json
from nnunet_hlfd.teacher.locate import TeacherSpec, teacher_spec_from_path
from nnunet_hlfd.teacher.resolve import resolve_teachers, same_checkpoints

__all__ = [
    "Teacher",
    "TeacherSpec",
    "check_teacher",
    "file_sha256",
    "read_and_check_teachers",
    "read_teacher",
    "read_teacher_json",
    "resolve_teachers",
    "same_checkpoints",
    "teacher_spec_from_path",
]
