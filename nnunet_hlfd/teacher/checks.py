"""Refuse a teacher that cannot teach this student: other data, other labels, other preprocessing, other fold
(or, for several teachers, cases the student validates on)."""

from nnunet_hlfd.errors import TeacherMismatchError
from nnunet_hlfd.teacher.leakage import check_teachers_do_not_leak
from nnunet_hlfd.teacher.load import Teacher, read_teacher
from nnunet_hlfd.teacher.locate import TeacherSpec

# Keys of a configuration that determine the preprocessed data (nnU-Net's "when you must rerun preprocessing").
PREPROCESSING_KEYS = (
    "data_identifier",
    "preprocessor_name",
    "spacing",
    "normalization_schemes",
    "use_mask_for_norm",
    "resampling_fn_data",
    "resampling_fn_data_kwargs",
    "resampling_fn_seg",
    "resampling_fn_seg_kwargs",
)
PLANS_PREPROCESSING_KEYS = ("transpose_forward", "foreground_intensity_properties_per_channel")
LABEL_KEYS = ("labels", "regions_class_order", "channel_names")


def _norm(value):
    """Lists and tuples compare equal; JSON round trips turn one into the other."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in value.items()}
    return value


def teacher_problems(
    teacher: Teacher, plans: dict, configuration: dict, dataset_json: dict, fold, same_fold: bool = True
) -> list[str]:
    """Every reason this teacher cannot teach a student of ``plans``/``configuration``/``fold``; [] if none.

    ``same_fold=False`` leaves the fold to the caller (multi-teacher KD checks the splits for leakage instead).
    """
    problems = []
    if teacher.plans.get("dataset_name") != plans.get("dataset_name"):
        problems.append(
            f"other dataset: the teacher was trained on {teacher.plans.get('dataset_name')}, "
            f"the student trains on {plans.get('dataset_name')}"
        )
    for key in LABEL_KEYS:
        t, s = _norm(teacher.dataset_json.get(key)), _norm(dataset_json.get(key))
        if t != s:
            what = "labels/regions" if key != "channel_names" else "input channels"
            problems.append(f"other {what}: teacher {key} = {t}, student {key} = {s}")
    teacher_cfg = teacher.configuration_dict()
    for key in PREPROCESSING_KEYS:
        t, s = _norm(teacher_cfg.get(key)), _norm(configuration.get(key))
        if t != s:
            problems.append(f"other preprocessing: teacher {key} = {t}, student {key} = {s}")
    for key in PLANS_PREPROCESSING_KEYS:
        t, s = _norm(teacher.plans.get(key)), _norm(plans.get(key))
        if t != s:
            problems.append(f"other preprocessing: teacher {key} = {t}, student {key} = {s}")
    folds = {teacher.fold, teacher.spec.fold}
    if same_fold and folds != {str(fold)}:
        problems.append(
            f"fold leakage: the teacher is fold {'/'.join(sorted(folds))}, the student fold {fold}; a teacher "
            f"of another fold (or 'all') has trained on this fold's validation cases"
        )
    return problems


def check_teacher(teacher: Teacher, plans: dict, configuration: dict, dataset_json: dict, fold) -> None:
    problems = teacher_problems(teacher, plans, configuration, dataset_json, fold)
    if problems:
        raise TeacherMismatchError(
            f"The teacher {teacher.spec.describe()} cannot teach this student:\n  - "
            + "\n  - ".join(problems)
            + "\nUse the teacher trained on the same dataset, plans' preprocessing and fold (nnU-Net's default "
            'layout), or point nnUNet_hlfd_teacher / the plans block "hlfd": {"teacher": ...} at such a '
            "model. Nothing has been written."
        )


def read_and_check_teachers(
    specs: list[TeacherSpec], plans: dict, configuration: dict, dataset_json: dict, fold, many: bool = False
) -> list[Teacher]:
    """Read every teacher and refuse, before anything is written, any that cannot teach this student.

    One teacher must be of the student's fold. Several (``many``, multi-teacher KD) are of other folds by design:
    every problem of every teacher is listed at once, and the splits are checked for leakage instead.
    """
    teachers = [read_teacher(spec) for spec in specs]
    if not many:
        for teacher in teachers:
            check_teacher(teacher, plans, configuration, dataset_json, fold)
        return teachers
    problems = [
        f"{t.spec.describe()}: {problem}"
        for t in teachers
        for problem in teacher_problems(t, plans, configuration, dataset_json, fold, same_fold=False)
    ]
    if problems:
        raise TeacherMismatchError(
            "These teachers cannot teach this student:\n  - "
            + "\n  - ".join(problems)
            + "\nEvery teacher must be trained on the same dataset, labels and preprocessing as the student. "
            "Nothing has been written."
        )
    check_teachers_do_not_leak(teachers, plans, dataset_json, fold)
    return teachers
