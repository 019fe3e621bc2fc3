"""HLFD: the stage mapping, the loss against an independent float64 computation, gradients and freezing."""

import pytest
import torch
import torch.nn.functional as F
from conftest import PATCH, make_unet

from nnunet_hlfd.capture import StageLayoutError
from nnunet_hlfd.methods import HLFD, Distiller, HLFDConfig, hlfd_loss, hlfd_stage_mapping


def test_stage_mapping_3d_four_stages():
    m = hlfd_stage_mapping(4)
    assert (m.flfd_unified_teacher, m.flfd_unified_student) == ((1, 2), 0)
    assert (m.flfd_individual_teacher, m.flfd_individual_student) == (3, (1, 2))
    assert (m.plfd_unified_teacher, m.plfd_unified_student) == ((0, 1), 0)
    assert (m.plfd_individual_teacher, m.plfd_individual_student) == (2, (1, 2))


def test_stage_mapping_2d_seven_stages():
    m = hlfd_stage_mapping(7)
    assert m.flfd_unified_teacher == (1, 2, 3, 4, 5) and m.flfd_individual_teacher == 6
    assert m.flfd_individual_student == (1, 2, 3, 4, 5)
    assert m.plfd_unified_teacher == (0, 1, 2, 3, 4) and m.plfd_individual_teacher == 5
    assert m.plfd_individual_student == (1, 2, 3, 4, 5)


def test_stage_mapping_refuses_two_stages():
    with pytest.raises(StageLayoutError, match="at least 3 stages"):
        hlfd_stage_mapping(2)


# ---- independent float64 reference of the four terms, with the stage indices written out by hand --------
def _A(f, p):
    return (f.double().abs() ** p).mean(dim=1, keepdim=True)


def _pool_to(x, size):
    factors = [a // b for a, b in zip(x.shape[2:], size)]
    return (F.avg_pool3d if x.dim() == 5 else F.avg_pool2d)(x, factors)


def _up_to(x, size):
    return F.interpolate(x, size=size, mode="trilinear" if x.dim() == 5 else "bilinear", align_corners=False)


def _at(a_s, a_t):
    s = a_s.flatten(1) / a_s.flatten(1).norm(dim=1, keepdim=True)
    t = a_t.flatten(1) / a_t.flatten(1).norm(dim=1, keepdim=True)
    return ((s - t) ** 2).sum(1).mean()


def _kl(zs, q, T, regions, valid):
    z = zs.double() / T
    if regions:
        ps = torch.sigmoid(z)
        per = (q * torch.log(q / ps) + (1 - q) * torch.log((1 - q) / (1 - ps))).sum(1)
    else:
        per = (q * (torch.log(q) - torch.log_softmax(z, 1))).sum(1)
    return (per[valid].mean() if valid is not None else per.mean()) * T * T


def _soft(z, T, regions):
    return torch.sigmoid(z.double() / T) if regions else torch.softmax(z.double() / T, 1)


def reference_hlfd(s_enc, t_enc, s_log, t_log, middle, bottleneck, dec_teacher_mix, final, cfg, regions, valid):
    p, T = cfg.exponent, cfg.temperature
    grid0 = s_enc[0].shape[2:]
    mix_channels = sum(t_enc[i].shape[1] for i in middle)
    mix = sum(_up_to(_A(t_enc[i], p), grid0) * t_enc[i].shape[1] for i in middle) / mix_channels
    flfd_u = _at(_A(s_enc[0], p), mix)
    a_b = _A(t_enc[bottleneck], p)
    flfd_i = sum(_at(_pool_to(_A(s_enc[i], p), a_b.shape[2:]), a_b) for i in middle) / len(middle)
    grid_d0 = s_log[0].shape[2:]
    q_mix = sum(_pool_to(_soft(t_log[j], T, regions), grid_d0) for j in dec_teacher_mix) / len(dec_teacher_mix)
    plfd_u = _kl(s_log[0], q_mix, T, regions, valid[0])
    q_final = _soft(t_log[final], T, regions)
    plfd_i = (
        sum(_kl(s_log[j], _pool_to(q_final, s_log[j].shape[2:]), T, regions, valid[j]) for j in range(1, final + 1))
        / final
    )
    flfd = cfg.unified_weight * flfd_u + cfg.individual_weight * flfd_i
    plfd = cfg.unified_weight * plfd_u + cfg.individual_weight * plfd_i
    return {
        "flfd_unified": flfd_u,
        "flfd_individual": flfd_i,
        "plfd_unified": plfd_u,
        "plfd_individual": plfd_i,
        "total": cfg.alpha * plfd + cfg.beta * flfd,
    }


def _random_captures(dim, regions, ignore):
    strides = {3: [(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)], 2: [(1, 1)] + [(2, 2)] * 4}[dim]
    n = len(strides)
    grids, g = [], list((8, 16, 16) if dim == 3 else (32, 32))
    for s in strides:
        g = [a // b for a, b in zip(g, s)]
        grids.append(tuple(g))
    B, C = 2, 3
    s_enc = {i: torch.randn(B, 4 * 2**i, *grids[i]) for i in range(n)}
    t_enc = {i: torch.randn(B, 8 * 2**i, *grids[i]) for i in range(n)}
    # decoder stage j is on the grid of encoder stage n-2-j
    s_log = {j: torch.randn(B, C, *grids[n - 2 - j]) * 2 for j in range(n - 1)}
    t_log = {j: torch.randn(B, C, *grids[n - 2 - j]) * 2 for j in range(n - 1)}
    valid = {j: (torch.rand(B, *grids[n - 2 - j]) > 0.2) if ignore else None for j in range(n - 1)}
    return n, s_enc, t_enc, s_log, t_log, valid


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("regions", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_hlfd_loss_matches_float64_reference(dim, regions, ignore):
    n, s_enc, t_enc, s_log, t_log, valid = _random_captures(dim, regions, ignore)
    cfg = HLFDConfig(alpha=0.3, beta=0.7, unified_weight=0.4, individual_weight=0.6, temperature=3.0, exponent=4.0)
    got = hlfd_loss(s_enc, t_enc, s_log, t_log, hlfd_stage_mapping(n), cfg, regions, valid)
    middle = tuple(range(1, n - 1))  # written out: 3D (1, 2), 2D (1, 2, 3)
    assert middle == ((1, 2) if dim == 3 else (1, 2, 3))
    ref = reference_hlfd(s_enc, t_enc, s_log, t_log, middle, n - 1, tuple(range(n - 2)), n - 2, cfg, regions, valid)
    for name, value in ref.items():
        assert got[name].item() == pytest.approx(value.item(), rel=1e-4), name


def test_ignored_voxels_do_not_count():
    n, s_enc, t_enc, s_log, t_log, _ = _random_captures(3, False, False)
    valid = {j: torch.ones(2, *s_log[j].shape[2:], dtype=torch.bool) for j in s_log}
    valid = {j: v.clone() for j, v in valid.items()}
    for v in valid.values():
        v[:, ..., :1] = False  # first column ignored everywhere
    cfg = HLFDConfig()
    before = hlfd_loss(s_enc, t_enc, s_log, t_log, hlfd_stage_mapping(n), cfg, False, valid)["plfd"]
    for j in s_log:  # change the student's predictions only where the ignore label is
        s_log[j][..., :1] = torch.randn_like(s_log[j][..., :1]) * 10
    after = hlfd_loss(s_enc, t_enc, s_log, t_log, hlfd_stage_mapping(n), cfg, False, valid)["plfd"]
    assert after.item() == pytest.approx(before.item(), rel=1e-6)


# ---- with real nnU-Net U-Nets: gradients, freezing, adapters ---------------------------------------------
@pytest.mark.parametrize(
    "dim,residual,heads", [(3, False, "deep_supervision"), (2, True, "adapters"), (3, False, "adapters")]
)
def test_gradients_reach_student_and_adapters_never_the_teacher(dim, residual, heads):
    student, teacher = make_unet(dim, 4, residual), make_unet(dim, 8, residual)
    distiller = Distiller(HLFD(HLFDConfig(plfd_heads=heads)), regions=False)
    distiller.attach(student, teacher, num_classes=3)
    teacher.train()  # the distiller must put it back into eval mode
    x = torch.randn(2, 1, *PATCH[dim])
    out, captured = distiller.forward(student, x)
    assert not teacher.training
    assert all(not t.requires_grad for t in captured.encoder.values())
    assert all(t.grad_fn is None for t in captured.logits.values())
    terms = distiller.losses(out, captured, {j: None for j in range(len(out))})
    terms["total"].backward()
    assert distiller.student_recorder.outputs == {}  # released after the loss
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    first_encoder_weight = next(student.encoder.stages[0].parameters())
    assert first_encoder_weight.grad is not None and first_encoder_weight.grad.abs().sum() > 0
    if heads == "adapters":
        assert distiller.adapters is not None
        for p in distiller.adapters.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0
        assert student.decoder.seg_layers[0].weight.grad is None  # DS heads untouched by KD
    else:
        assert distiller.adapters is None
        assert student.decoder.seg_layers[0].weight.grad.abs().sum() > 0  # lowest head trained by PLFD unified


def test_teacher_with_other_depth_is_refused():
    student = make_unet(3, 4)
    distiller = Distiller(HLFD(), regions=False)
    teacher = make_unet(2, 8)  # 5 stages
    with pytest.raises(StageLayoutError, match="must align"):
        distiller.attach(student, teacher, 3)
