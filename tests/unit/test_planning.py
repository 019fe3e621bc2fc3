"""The student plan: scaled features, optional fewer convolutions, stage alignment with the teacher."""

import copy

import pytest
from conftest import tiny_plans

from nnunet_hlfd.capture import StageLayoutError
from nnunet_hlfd.planning import check_stage_alignment, derive_student_architecture


def teacher_arch():
    return copy.deepcopy(tiny_plans()["configurations"]["3d_fullres"]["architecture"])


@pytest.mark.parametrize("width,expected", [(0.5, [4, 8, 16, 32]), (0.25, [2, 4, 8, 16])])
def test_width_scales_features_and_keeps_everything_else(width, expected):
    t = teacher_arch()
    s = derive_student_architecture(t, width)
    assert s["arch_kwargs"]["features_per_stage"] == expected
    for key in ("n_stages", "strides", "kernel_sizes", "conv_op", "n_conv_per_stage"):
        assert s["arch_kwargs"][key] == t["arch_kwargs"][key]
    assert t["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64]  # teacher untouched
    check_stage_alignment(t, s, [16, 32, 32])


def test_fewer_convolutions_per_stage():
    s = derive_student_architecture(teacher_arch(), 0.5, n_conv_per_stage=1)
    assert s["arch_kwargs"]["n_conv_per_stage"] == [1, 1, 1, 1]
    s = derive_student_architecture(teacher_arch(), 0.5, n_conv_per_stage=[1, 2, 3, 1])
    assert s["arch_kwargs"]["n_conv_per_stage"] == [1, 2, 2, 1]  # never more than the teacher's
    with pytest.raises(ValueError, match="4 positive entries"):
        derive_student_architecture(teacher_arch(), 0.5, n_conv_per_stage=[1, 1])


def test_residual_encoder_blocks_are_capped():
    t = teacher_arch()
    t["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    kw = t["arch_kwargs"]
    kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
    s = derive_student_architecture(t, 0.5, n_conv_per_stage=1)
    assert s["arch_kwargs"]["n_blocks_per_stage"] == [1, 1, 1, 1]
    check_stage_alignment(t, s, [16, 32, 32])


def test_width_out_of_range():
    with pytest.raises(ValueError, match="width"):
        derive_student_architecture(teacher_arch(), 1.5)


def test_misaligned_stages_are_refused():
    t = teacher_arch()
    s = derive_student_architecture(t, 0.5)
    s["arch_kwargs"]["strides"][1] = [2, 2, 2]
    with pytest.raises(StageLayoutError, match="strides differ"):
        check_stage_alignment(t, s, [16, 32, 32])
    with pytest.raises(StageLayoutError, match="not divisible"):
        check_stage_alignment(t, derive_student_architecture(t, 0.5), [16, 30, 32])
    other = copy.deepcopy(t)
    other["network_class_name"] = "my_package.Primus"
    with pytest.raises(StageLayoutError, match="Primus"):
        check_stage_alignment(other, derive_student_architecture(other, 0.5), [16, 32, 32])


# ---- training on a fraction of the fold's cases ----------------------------------------------------------
def test_training_subset_is_seeded_sized_and_nested():
    from nnunet_hlfd.splits import training_subset

    keys = [f"case_{i:03d}" for i in range(40)]
    half = training_subset(list(reversed(keys)), 0.5, seed=3)
    assert half == training_subset(keys, 0.5, seed=3)  # the order the fold lists its cases in does not matter
    assert len(half) == 20 and set(half) <= set(keys) and half == sorted(half)
    assert set(training_subset(keys, 0.25, seed=3)) < set(half) < set(training_subset(keys, 0.75, seed=3))
    assert training_subset(keys, 0.5, seed=4) != half
    assert (
        training_subset(keys, 0.01, seed=0) == training_subset(keys, 0.01, seed=0)
        and len(training_subset(keys, 0.01, seed=0)) == 1
    )
    assert training_subset(keys, 1.0) == keys


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, "half"])
def test_a_bad_training_fraction_is_refused(fraction):
    from nnunet_hlfd.errors import OptionError
    from nnunet_hlfd.splits import training_subset

    with pytest.raises(OptionError, match="training_fraction must be a number in"):
        training_subset(["a", "b"], fraction)
