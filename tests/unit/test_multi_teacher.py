"""Combining teachers' soft predictions: mean and confidence weighting, checked voxel by voxel in float64."""

import numpy as np
import pytest
import torch

from nnunet_hlfd.methods.multi_teacher import combine_probabilities


def teachers(regions: bool, k: int = 3, shape=(2, 3, 4, 5)):
    torch.manual_seed(0)
    logits = [torch.randn(shape, dtype=torch.float64) * 2 for _ in range(k)]
    return [torch.sigmoid(z) if regions else torch.softmax(z, 1) for z in logits]


@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
def test_mean_and_confidence_weighting(regions):
    probs = teachers(regions)
    mean, _ = combine_probabilities(probs, "mean", regions)
    assert torch.allclose(mean, sum(p.float() for p in probs) / 3)
    combined, weights = combine_probabilities(probs, "confidence", regions)
    p = np.stack([t.numpy() for t in probs])  # K, B, C, H, W
    conf = np.maximum(p, 1 - p).mean(2) if regions else p.max(2)  # K, B, H, W
    b, h, w = 1, 2, 3  # one voxel, by hand
    expected = sum(conf[k, b, h, w] * p[k, b, :, h, w] for k in range(3)) / conf[:, b, h, w].sum()
    assert combined[b, :, h, w].numpy() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(weights.sum(0), torch.ones_like(weights[0]))
    if not regions:
        assert torch.allclose(combined.sum(1), torch.ones_like(combined[:, 0]))  # still a distribution


def test_sample_confidence_gives_one_weight_per_teacher_and_sample():
    probs = teachers(False)
    sure = torch.nn.functional.one_hot(probs[0].argmax(1), 3).movedim(-1, 1).double()
    combined, weights = combine_probabilities([sure, *probs[1:]], "sample_confidence")
    assert weights.shape == (3, 2, 1, 1, 1)
    assert (weights[0] > weights[1]).all() and (weights[0] > weights[2]).all()  # the certain teacher counts most
    with pytest.raises(ValueError, match="unknown combination"):
        combine_probabilities(probs, "vote")


# ---------------------------------------------------------------------------------------------------
# the method: every term against float64 numpy, and several teachers run one after another


def np_attention(f: np.ndarray, p: float) -> np.ndarray:
    """(B, positions) L2-normalised channel mean of |f|^p."""
    a = (np.abs(f) ** p).mean(1).reshape(f.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def np_softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@pytest.mark.parametrize("combination", ["mean", "confidence"])
def test_multi_teacher_terms_against_float64(combination):
    from nnunet_hlfd.losses.lovasz import lovasz_softmax
    from nnunet_hlfd.methods.base import Captured
    from nnunet_hlfd.methods.multi_teacher import MultiTeacherConfig, MultiTeacherKD

    torch.manual_seed(3)
    config = MultiTeacherConfig(combination=combination, temperature=2.0, kl_weight=0.7, feature_weight=0.3)
    method = MultiTeacherKD(config)
    b, c, grid, coarse = 2, 3, (8, 8), (4, 4)
    teacher_logits = [torch.randn(b, c, *grid) * 2 for _ in range(2)]
    teacher_features = [torch.randn(b, 5, *coarse) for _ in range(2)]  # stage 1, 5 channels
    summaries = [
        method.summarize_teacher(Captured(2, encoder={1: f}, logits={0: z}), regions=False)
        for z, f in zip(teacher_logits, teacher_features)
    ]
    combined = method.combine_teachers(summaries, regions=False)
    student_logits = torch.randn(b, c, *grid, requires_grad=True)
    student_feature = torch.randn(b, 4, *coarse)  # other channel count than the teachers: no adapter needed
    target = torch.randint(0, 3, (b, 1, *grid))
    valid = torch.rand(b, *grid) > 0.2
    terms = method.loss(
        Captured(2, encoder={1: student_feature}, logits={0: student_logits}),
        combined,
        None,
        {0: valid},
        False,
        targets={0: target},
    )

    # float64 by hand
    z = [t.double().numpy() for t in teacher_logits]
    p1, pt = [np_softmax(x) for x in z], [np_softmax(x / 2.0) for x in z]
    if combination == "mean":
        w = [np.full((b, 1, *grid), 0.5)] * 2
    else:
        conf = [p.max(1, keepdims=True) for p in p1]
        w = [cf / (conf[0] + conf[1]) for cf in conf]
    q = w[0] * pt[0] + w[1] * pt[1]
    s = np_softmax(student_logits.detach().double().numpy() / 2.0)
    kl_voxel = (q * (np.log(q) - np.log(s))).sum(1)
    kl = (kl_voxel * valid.numpy()).sum() / valid.numpy().sum() * 4.0
    # teacher weights on the coarse grid: 2x2 averages
    w_coarse = [x.reshape(b, 1, 4, 2, 4, 2).mean((3, 5)).reshape(b, -1) for x in w]
    att_t = w_coarse[0] * np_attention(teacher_features[0].double().numpy(), 2) + w_coarse[1] * np_attention(
        teacher_features[1].double().numpy(), 2
    )
    att_t /= np.linalg.norm(att_t, axis=1, keepdims=True)
    feature = ((np_attention(student_feature.double().numpy(), 2) - att_t) ** 2).sum(1).mean()
    lovasz = lovasz_softmax(torch.softmax(student_logits.double(), 1), target[:, 0], valid).item()

    assert terms["kl"].item() == pytest.approx(0.7 * kl, rel=1e-4)
    assert terms["feature"].item() == pytest.approx(0.3 * feature, rel=1e-4)
    assert terms["lovasz"].item() == pytest.approx(lovasz, rel=1e-4)
    assert terms["total"].item() == pytest.approx(0.7 * kl + 0.3 * feature + lovasz, rel=1e-4)
    terms["total"].backward()
    assert student_logits.grad[~valid.unsqueeze(1).expand_as(student_logits)].abs().max() == 0  # ignored voxels


def test_regions_use_the_lovasz_hinge_on_region_channels():
    from nnunet_hlfd.losses.lovasz import lovasz_hinge
    from nnunet_hlfd.methods.base import Captured
    from nnunet_hlfd.methods.multi_teacher import MultiTeacherKD

    torch.manual_seed(4)
    method = MultiTeacherKD()
    logits = torch.randn(2, 2, 6, 6)
    summary = method.summarize_teacher(Captured(2, encoder={1: torch.randn(2, 3, 3, 3)}, logits={0: logits}), True)
    combined = method.combine_teachers([summary], True)
    assert torch.allclose(combined.soft, torch.sigmoid(logits / 4))  # one teacher: its own soft prediction
    student = torch.randn(2, 2, 6, 6)
    target = (torch.rand(2, 3, 6, 6) > 0.5).float()  # 2 regions + the ignore channel
    valid = target[:, -1] == 0
    terms = method.loss(
        Captured(2, encoder={1: torch.randn(2, 3, 3, 3)}, logits={0: student}), combined, None, {0: valid}, True,
        targets={0: target},
    )  # fmt: skip
    assert terms["lovasz"].item() == pytest.approx(lovasz_hinge(student, target[:, :2], valid).item())


def test_teachers_run_one_after_another_and_keep_only_their_summaries():
    from conftest import make_unet

    from nnunet_hlfd.methods import Distiller
    from nnunet_hlfd.methods.multi_teacher import CombinedTeachers, MultiTeacherConfig, MultiTeacherKD

    torch.manual_seed(6)
    student, teachers = make_unet(3, 4), [make_unet(3, 8), make_unet(3, 6), make_unet(3, 8)]
    distiller = Distiller(MultiTeacherKD(MultiTeacherConfig(combination="sample_confidence")), regions=False)
    distiller.attach(student, teachers, num_classes=3)
    order = []
    for k, t in enumerate(teachers):
        t.register_forward_pre_hook(lambda module, args, k=k: order.append((k, [len(r.outputs) for r in recorders])))
    recorders = distiller.teacher_recorders
    data = torch.randn(2, 1, 8, 16, 16)
    output, combined = distiller.forward(student, data)
    assert [k for k, _ in order] == [0, 1, 2]
    assert all(sum(held) == 0 for _, held in order)  # no other teacher's features in memory when one starts
    assert isinstance(combined, CombinedTeachers) and combined.weights.shape == (3, 2, 1, 1, 1, 1)
    with torch.no_grad():
        expected = sum(
            w * torch.softmax(t(data)[0] / 4, 1) for w, t in zip(combined.weights, teachers)
        )  # fmt: skip
    assert torch.allclose(combined.soft, expected, atol=1e-6)
    assert all(not t.training and all(p.grad is None for p in t.parameters()) for t in teachers)
