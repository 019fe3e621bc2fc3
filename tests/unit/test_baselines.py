"""KD baselines and HLFD ablations: each loss against an independent float64 computation (2D and 3D), the stage
pairs of every declaration written out by hand, and every method on real nnU-Net U-Nets (labels, regions,
ignore label, autocast), with gradients reaching the student and its adapters and never the teacher."""

import math

import numpy as np
import pytest
import torch
from conftest import make_unet, targets_for

from nnunet_hlfd.methods import Distiller
from nnunet_hlfd.methods.attention_transfer import AttentionTransfer, AttentionTransferConfig
from nnunet_hlfd.methods.contrastive import MultiScaleContrastiveKD
from nnunet_hlfd.methods.cwd import ChannelWiseDistillation, cwd_loss
from nnunet_hlfd.methods.fitnets import FitNets, FitNetsConfig, fitnets_loss
from nnunet_hlfd.methods.hlfd_ablations import AblationConfig, ConcatenatedFeedback, HLFDAblation, ablation_pairs
from nnunet_hlfd.methods.logit_kd import LogitKD, LogitKDConfig, deep_supervision_weights, logit_kd_pairs
from nnunet_hlfd.methods.multi_teacher import MultiTeacherKD
from nnunet_hlfd.methods.stage_pairs import StagePair, feature_pair_loss, pixel_pair_loss
from nnunet_hlfd.methods.structured_kd import StructuredKD, pairwise_similarity_loss

GRIDS = {2: (6, 8), 3: (4, 6, 5)}


def logits(dim: int, c: int = 3, b: int = 2, scale: float = 3.0, grid=None) -> torch.Tensor:
    return torch.randn(b, c, *(grid or GRIDS[dim])) * scale


# ---------------------------------------------------------------------------------------------------
# independent float64 references (numpy, written from the papers' formulas)


def np_softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_pixel_kl(s, t, T, regions=False, valid=None):
    s, t = s.double().numpy() / T, t.double().numpy() / T
    if regions:
        q, p = 1 / (1 + np.exp(-t)), 1 / (1 + np.exp(-s))
        kl = (q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))).sum(1)
    else:
        q, p = np_softmax(t, 1), np_softmax(s, 1)
        kl = (q * np.log(q / p)).sum(1)
    w = np.ones_like(kl) if valid is None else valid.numpy().astype(float)
    return (kl * w).sum() / w.sum() * T**2


def ref_at(s, t, p):
    def amap(f):
        a = (np.abs(f.double().numpy()) ** p).mean(1).reshape(f.shape[0], -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return ((amap(s) - amap(t)) ** 2).sum(1).mean()


def ref_cwd(s, t, T, valid=None):
    b, c = s.shape[:2]
    total = 0.0
    for i in range(b):
        keep = np.ones(int(np.prod(s.shape[2:])), bool) if valid is None else valid[i].numpy().ravel()
        for k in range(c):
            zs = s[i, k].double().numpy().ravel()[keep] / T
            zt = t[i, k].double().numpy().ravel()[keep] / T
            q, p = np_softmax(zt, 0), np_softmax(zs, 0)
            total += (q * np.log(q / p)).sum()
    return total / (b * c) * T**2


def ref_pairwise(s, t, scale):
    def affinity(f):
        f = f.double().numpy()
        kernel = [max(1, math.ceil(n * scale)) for n in f.shape[2:]]
        counts = [math.ceil(n / k) for n, k in zip(f.shape[2:], kernel)]
        nodes = []
        for idx in np.ndindex(*counts):  # max over each (possibly partial) window: ceil-mode max pooling
            window = tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, kernel))
            nodes.append(f[(slice(None), slice(None), *window)].reshape(f.shape[0], f.shape[1], -1).max(2))
        v = np.stack(nodes, 2)  # (B, C, N)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return np.einsum("bcm,bcn->bmn", v, v)

    a, b = affinity(s), affinity(t)
    return ((a - b) ** 2).sum((1, 2)).mean() / a.shape[1] ** 2


# ---------------------------------------------------------------------------------------------------
# losses against the references


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("regions", [False, True])
def test_pixel_pair_loss_is_weighted_kl_per_pair(dim, regions):
    torch.manual_seed(dim)
    grid = GRIDS[dim]
    low = tuple(n // 2 for n in grid)
    s = {0: logits(dim, grid=low), 1: logits(dim)}
    t = {0: logits(dim, grid=low), 1: logits(dim)}
    valid = {1: torch.rand(2, *grid) > 0.3}
    pairs = (StagePair(1, 1, 0.7), StagePair(0, 0, 0.2))
    got = pixel_pair_loss(s, t, pairs, 4.0, regions, valid)
    expected = 0.7 * ref_pixel_kl(s[1], t[1], 4.0, regions, valid[1]) + 0.2 * ref_pixel_kl(s[0], t[0], 4.0, regions)
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_pixel_pair_resizes_the_teacher_to_the_student_grid():
    s = {1: logits(2, grid=(4, 4))}
    t = {1: logits(2, grid=(8, 8))}
    got = pixel_pair_loss(s, t, (StagePair(1, 1, 1.0),), 2.0, False)
    # area downsampling of probabilities = 2x2 block means of the teacher's soft targets
    q = np_softmax(t[1].double().numpy() / 2.0, 1).reshape(2, 3, 4, 2, 4, 2).mean((3, 5))
    p = np_softmax(s[1].double().numpy() / 2.0, 1)
    expected = (q * np.log(q / p)).sum(1).mean() * 4.0
    assert got.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("p", [2.0, 4.0])
def test_feature_pair_loss_is_attention_transfer(dim, p):
    torch.manual_seed(1)
    s = {1: torch.randn(2, 4, *GRIDS[dim])}
    t = {1: torch.randn(2, 9, *GRIDS[dim]), 2: torch.randn(2, 5, *GRIDS[dim])}
    pairs = (StagePair(1, 1, 0.25), StagePair(1, 2, 0.75))
    got = feature_pair_loss(s, t, pairs, p)
    expected = 0.25 * ref_at(s[1], t[1], p) + 0.75 * ref_at(s[1], t[2], p)
    assert got.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dim", [2, 3])
def test_cwd_against_float64(dim):
    torch.manual_seed(2)
    s, t = logits(dim), logits(dim)
    assert cwd_loss(s, t, 4.0).item() == pytest.approx(ref_cwd(s, t, 4.0), rel=1e-4)
    valid = torch.rand(2, *GRIDS[dim]) > 0.4
    assert cwd_loss(s, t, 4.0, valid).item() == pytest.approx(ref_cwd(s, t, 4.0, valid), rel=1e-4)


def test_cwd_ignores_masked_voxels_and_gives_them_no_gradient():
    s = logits(3).requires_grad_()
    t = logits(3)
    valid = torch.ones(2, *GRIDS[3], dtype=torch.bool)
    valid[:, 0] = False
    t_changed = t.clone()
    t_changed[:, :, 0] = 100.0  # the ignored slice can be anything
    loss = cwd_loss(s, t, 2.0, valid)
    assert loss.item() == pytest.approx(cwd_loss(s, t_changed, 2.0, valid).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad[:, :, 0].abs().max() == 0


@pytest.mark.parametrize("dim", [2, 3])
def test_fitnets_loss_is_mse(dim):
    torch.manual_seed(3)
    a = {2: torch.randn(2, 6, *GRIDS[dim]), 3: torch.randn(2, 8, *GRIDS[dim])}
    t = {2: torch.randn(2, 6, *GRIDS[dim]), 3: torch.randn(2, 8, *GRIDS[dim])}
    expected = np.mean([((a[i].double() - t[i].double()) ** 2).mean().item() for i in (2, 3)])
    assert fitnets_loss(a, t).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dim, grid", [(2, (6, 8)), (2, (7, 5)), (3, (4, 6, 5))])
def test_pairwise_similarity_against_float64(dim, grid):
    torch.manual_seed(4)
    s, t = torch.randn(2, 4, *grid), torch.randn(2, 7, *grid)  # channel counts may differ
    for scale in (0.5, 0.25):
        assert pairwise_similarity_loss(s, t, scale).item() == pytest.approx(ref_pairwise(s, t, scale), rel=1e-4)


def test_pairwise_similarity_of_identical_structure_is_zero():
    f = torch.randn(2, 5, 8, 8)
    assert pairwise_similarity_loss(f, 3 * f, 0.25).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# declarations written out by hand (6-stage 3D U-Net: encoder 0..5, decoder 0..4, final = 4, bottleneck = 5)


def pairs_of(stage_pairs):
    return [(p.student, p.teacher, round(p.weight, 6)) for p in stage_pairs]


def test_deep_supervision_weights_are_nnunets():
    # nnU-Net 2.8.1 _build_loss: 1/2^i, lowest output 0, normalised
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])


def test_logit_kd_pairs():
    assert pairs_of(logit_kd_pairs(6, 1.0, False).pixel) == [(4, 4, 1.0)]
    ds = logit_kd_pairs(6, 2.0, True).pixel
    assert pairs_of(ds) == [
        (4, 4, round(16 / 15, 6)),
        (3, 3, round(8 / 15, 6)),
        (2, 2, round(4 / 15, 6)),
        (1, 1, round(2 / 15, 6)),
    ]


def test_attention_transfer_pairs_every_stage_but_the_first():
    pairs = AttentionTransfer(AttentionTransferConfig(weight=0.5)).pairs_for(6).feature
    assert pairs_of(pairs) == [(i, i, 0.1) for i in range(1, 6)]


def test_ablation_pairs_by_hand():
    def table(variant, alpha=0.1, beta=0.9):
        p = ablation_pairs(variant, 6, alpha, beta)
        return pairs_of(p.pixel), pairs_of(p.feature)

    assert table("attention_only", 0.0, 1.0) == ([], [(5, 5, 1.0)])
    assert table("without_feedback") == ([(4, 4, 0.1)], [(5, 5, 0.9)])
    # decoder stage 0's head is untrained (nnU-Net's DS weight 0): layer-wise KD starts at stage 1
    assert table("layerwise") == ([(j, j, 0.025) for j in range(1, 5)], [(i, i, 0.15) for i in range(6)])
    assert table("individual_feedback") == ([(j, 4, 0.025) for j in (1, 2, 3, 4)], [(i, 5, 0.18) for i in range(1, 6)])


def test_fitnets_hint_stage_from_the_end():
    assert FitNets().stages(6) == (5,)
    assert FitNets(FitNetsConfig(hint_stages=(2, -1))).stages(6) == (2, 5)
    with pytest.raises(Exception, match="outside the 6 encoder stages"):
        FitNets(FitNetsConfig(hint_stages=(7,))).stages(6)


# ---------------------------------------------------------------------------------------------------
# every method on real nnU-Net U-Nets


ABLATIONS = ("attention_only", "without_feedback", "layerwise", "individual_feedback")
METHODS = {
    "logit_kd": lambda: LogitKD(),
    "logit_kd_ds": lambda: LogitKD(LogitKDConfig(deep_supervision=True)),
    "at_p2": lambda: AttentionTransfer(),
    "at_p4": lambda: AttentionTransfer(AttentionTransferConfig(exponent=4.0)),
    "fitnets": lambda: FitNets(FitNetsConfig(hint_stages=(1, -1))),
    "cwd": lambda: ChannelWiseDistillation(),
    "structured_kd": lambda: StructuredKD(),
    **{v: (lambda v=v: HLFDAblation(AblationConfig(variant=v))) for v in ABLATIONS},
    "hlfd_concatenated_feedback": lambda: ConcatenatedFeedback(),
    "multi_teacher": lambda: MultiTeacherKD(),  # one teacher here; several in test_multi_teacher.py
    "multi_scale_contrastive": lambda: MultiScaleContrastiveKD(),
}  # fmt: skip


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dim, regions", [(3, False), (2, True)])
def test_method_on_nnunet_unets(name, dim, regions):
    from nnunet_hlfd.methods.base import by_decoder_stage, valid_masks

    torch.manual_seed(5)
    student, teacher = make_unet(dim, 4), make_unet(dim, 8)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = METHODS[name]()
    distiller = Distiller(method, regions=regions)
    distiller.attach(student, teacher, num_classes=3)
    shape = (2, 1, 8, 16, 16) if dim == 3 else (2, 1, 32, 32)
    data = torch.randn(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # nnU-Net trains under autocast
        output, captured_teacher = distiller.forward(student, data)
        targets = targets_for(output, regions, ignore=True)
        valid = valid_masks(targets, distiller.n_stages, 3, regions)
        terms = distiller.losses(output, captured_teacher, valid, by_decoder_stage(targets, distiller.n_stages))
    assert set(terms) == {*method.term_names, "total"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in terms.values())
    assert terms["total"].item() > 0
    terms["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    if distiller.adapters is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.adapters.parameters())
    assert (name in ("fitnets", "hlfd_concatenated_feedback", "multi_scale_contrastive")) == (
        distiller.adapters is not None
    )


@pytest.mark.parametrize("name", METHODS)
def test_a_random_lowest_teacher_head_changes_no_method(name):
    """nnU-Net trains the lowest-resolution deep-supervision output with weight 0, so a trained teacher's
    decoder.seg_layers[0] is a random projection: no method may learn from it."""
    from nnunet_hlfd.methods.base import by_decoder_stage, valid_masks

    student, teacher = make_unet(3, 4), make_unet(3, 8)
    distiller = Distiller(METHODS[name](), regions=False)
    distiller.attach(student, teacher, num_classes=3)
    data = torch.randn(2, 1, 8, 16, 16)

    def terms(targets=None):
        output, captured = distiller.forward(student, data)
        targets = targets or targets_for(output, regions=False, ignore=True)
        valid = valid_masks(targets, distiller.n_stages, 3, False)
        torch.manual_seed(3)  # the contrastive method samples its anchors
        values = distiller.losses(output, captured, valid, by_decoder_stage(targets, distiller.n_stages))
        return {k: v.detach() for k, v in values.items()}, targets

    before, targets = terms()
    with torch.no_grad():
        for parameter in teacher.decoder.seg_layers[0].parameters():
            parameter.copy_(torch.randn_like(parameter) * 5)
    after, _ = terms(targets)
    assert all(torch.equal(before[k], after[k]) for k in before), name


# ---------------------------------------------------------------------------------------------------
# the method interface: declared inputs, the stage count on the captured tensors, no option clashes


def test_a_method_gets_the_targets_only_when_it_declares_them():
    from dataclasses import dataclass

    from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps, by_decoder_stage

    seen = {}

    class Probe(DistillationMethod):
        name, term_names = "probe", ("x",)

        def student_taps(self, n_stages: int) -> Taps:
            return Taps()

        teacher_taps = student_taps

        def loss(self, student: Captured, teacher: Captured, adapters, valid, regions, targets=None):
            seen.update(n_stages=(student.n_stages, teacher.n_stages), final=student.final, targets=targets)
            return {"x": student.logits[student.final].mean(), "total": student.logits[student.final].mean()}

    student, teacher = make_unet(3, 4), make_unet(3, 8)
    for inputs, expected in ((("valid",), None), (("valid", "targets"), "given")):
        method = Probe()
        method.inputs = inputs
        distiller = Distiller(method, regions=False)
        distiller.attach(student, teacher, num_classes=3)
        output, captured = distiller.forward(student, torch.randn(2, 1, 8, 16, 16))
        targets = by_decoder_stage(targets_for(output, regions=False, ignore=False), distiller.n_stages)
        distiller.losses(output, captured, {}, targets)
        assert seen["n_stages"] == (4, 4) and seen["final"] == 2  # 4 stages: decoder stages 0..2
        assert (seen["targets"] is targets) == (expected == "given")
        if expected:
            with pytest.raises(ValueError, match="needs the segmentation targets"):
                distiller.losses(*distiller.forward(student, torch.randn(2, 1, 8, 16, 16)), {})

    with pytest.raises(TypeError, match="not loss inputs"):
        type("Bad", (Probe,), {"inputs": ("valid", "labels")})

    with pytest.raises(TypeError, match="has no targets parameter"):

        class NoTargets(Probe):
            def loss(self, student, teacher, adapters, valid, regions):
                return {}

    @dataclass(frozen=True)
    class ClashingConfig:
        width: float = 1.0  # also the student's option: the plans block could not tell them apart

    from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation

    with pytest.raises(TypeError, match=r"the fields \['width'\] of ClashingConfig are also student options"):
        type("nnUNetTrainerClash", (nnUNetTrainerDistillation,), {"method_class": Probe, "config": ClashingConfig()})
