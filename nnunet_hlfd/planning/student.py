"""Derive a slimmer student from the teacher's nnU-Net configuration, stage-aligned by construction.

Same patch size, strides, kernel sizes and number of stages, so every student stage has the spatial shape of
the teacher's; fewer features per stage (``width``), optionally fewer convolutions (or residual blocks) per
encoder stage. The result is a complete ``architecture`` dict written into the student's plans, so stock
``nnUNetv2_predict`` rebuilds it with nnU-Net's own builder and never needs the teacher.
"""

import copy
import math

from nnunet_hlfd.capture import StageLayoutError

SUPPORTED_ARCHITECTURES = ("PlainConvUNet", "ResidualEncoderUNet")


def _class_name(architecture: dict) -> str:
    return architecture["network_class_name"].rsplit(".", 1)[-1]


def _blocks_key(kwargs: dict) -> str:
    return "n_blocks_per_stage" if "n_blocks_per_stage" in kwargs else "n_conv_per_stage"


def derive_student_architecture(teacher_architecture: dict, width: float, n_conv_per_stage=None) -> dict:
    """``teacher_architecture`` with features scaled by ``width`` (rounded, at least 1).

    ``n_conv_per_stage``: None keeps the teacher's; an int or a list caps the encoder's convolutions
    (PlainConvUNet) or residual blocks (ResidualEncoderUNet) per stage.
    """
    if not 0 < width <= 1:
        raise ValueError(f"the student width multiplier must be in (0, 1], got {width}")
    student = copy.deepcopy(teacher_architecture)
    kwargs = student["arch_kwargs"]
    kwargs["features_per_stage"] = [max(1, round(f * width)) for f in kwargs["features_per_stage"]]
    if kwargs.get("stem_channels"):
        kwargs["stem_channels"] = max(1, round(kwargs["stem_channels"] * width))
    if n_conv_per_stage is not None:
        key = _blocks_key(kwargs)
        n = kwargs["n_stages"]
        wanted = [n_conv_per_stage] * n if isinstance(n_conv_per_stage, int) else list(n_conv_per_stage)
        if len(wanted) != n or min(wanted) < 1:
            raise ValueError(f"n_conv_per_stage needs {n} positive entries (one per stage), got {n_conv_per_stage}")
        teacher_blocks = kwargs[key] if isinstance(kwargs[key], list) else [kwargs[key]] * n
        kwargs[key] = [min(w, t) for w, t in zip(wanted, teacher_blocks)]
    return student


def check_stage_alignment(teacher_architecture: dict, student_architecture: dict, patch_size) -> None:
    """Raise :class:`StageLayoutError` unless every student stage has the shape of the teacher's stage."""
    problems = []
    for role, arch in (("teacher", teacher_architecture), ("student", student_architecture)):
        if _class_name(arch) not in SUPPORTED_ARCHITECTURES:
            problems.append(f"the {role} is a {_class_name(arch)}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    t, s = teacher_architecture["arch_kwargs"], student_architecture["arch_kwargs"]
    for key in ("n_stages", "strides", "kernel_sizes", "conv_op"):
        if t.get(key) != s.get(key):
            problems.append(f"{key} differs: teacher {t.get(key)}, student {s.get(key)}")
    if t["n_stages"] < 3:
        problems.append(f"HLFD needs at least 3 stages (a middle stage); the teacher has {t['n_stages']}")
    cumulative = [math.prod(axis) for axis in zip(*t["strides"])]
    if len(cumulative) != len(patch_size) or any(p % c for p, c in zip(patch_size, cumulative)):
        problems.append(f"patch size {list(patch_size)} is not divisible by the total stride {cumulative}")
    if problems:
        raise StageLayoutError(
            "The student's stages do not align with the teacher's:\n  - "
            + "\n  - ".join(problems)
            + "\nDerive the student from the teacher's own configuration (the default) and use an nnU-Net U-Net "
            "teacher."
        )


def student_configuration(own: dict, teacher: dict, student_architecture: dict, record: dict) -> dict:
    """The full student configuration: the student's own (its preprocessed data) with the teacher's patch and
    batch size, the student architecture and an ``hlfd`` record of the options used.

    Written in full (no ``inherits_from``): nnU-Net's configuration inheritance is a shallow update.
    """
    configuration = copy.deepcopy(own)
    configuration.pop("inherits_from", None)
    configuration["patch_size"] = list(teacher["patch_size"])
    configuration["batch_size"] = teacher["batch_size"]
    configuration["architecture"] = student_architecture
    configuration["hlfd"] = record
    return configuration
