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
    assert m.flfd_individual == ((1, (3,)), (2, (3,)))
    # decoder stage 0's head is untrained (nnU-Net's DS weight 0): the unified term starts at stage 1
    assert (m.plfd_unified_teacher, m.plfd_unified_student) == ((1,), 1)
    assert (m.plfd_individual_teacher, m.plfd_individual_student) == (2, (1, 2))


def test_stage_mapping_2d_seven_stages():
    m = hlfd_stage_mapping(7)
    assert m.flfd_unified_teacher == (1, 2, 3, 4, 5)
    assert m.flfd_individual == tuple((i, (6,)) for i in (1, 2, 3, 4, 5))
    assert (m.plfd_unified_teacher, m.plfd_unified_student, m.plfd_individual_teacher) == ((1, 2, 3, 4), 1, 5)
    assert m.plfd_individual_student == (1, 2, 3, 4, 5)


def test_stage_mapping_three_stages_reads_the_only_trained_head():
    m = hlfd_stage_mapping(3)
    assert (m.plfd_unified_teacher, m.plfd_unified_student, m.plfd_individual_student) == ((1,), 1, (1,))


def test_feature_mappings_same_and_neighbouring_stages():
    same, neighbouring = hlfd_stage_mapping(5, "same_stage"), hlfd_stage_mapping(5, "neighbouring")
    assert (same.flfd_unified_teacher, same.flfd_unified_student) == ((0,), 0)
    assert same.flfd_individual == ((1, (1,)), (2, (2,)), (3, (3,)), (4, (4,)))
    assert (neighbouring.flfd_unified_teacher, neighbouring.flfd_unified_student) == ((0, 1), 0)
    assert neighbouring.flfd_individual == ((1, (1, 2)), (2, (2, 3)), (3, (3, 4)), (4, (4,)))
    for m in (same, neighbouring):  # the pixel level does not depend on the feature mapping
        assert (m.plfd_unified_teacher, m.plfd_unified_student, m.plfd_individual_student) == ((1, 2), 1, (1, 2, 3))


def test_stage_mapping_refuses_two_stages():
    with pytest.raises(StageLayoutError, match="at least 3 stages"):
        hlfd_stage_mapping(2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"plfd_divergence": "js"}, "plfd_divergence must be one of"),
        ({"flfd_mapping": "all"}, "flfd_mapping must be one of"),
        ({"plfd_heads": "foo"}, "plfd_heads must be one of"),
        ({"rampup_fraction": 1.0}, r"rampup_fraction must be in \[0, 1\)"),
        ({"temperature": 0}, "temperature and exponent must be positive"),
    ],
)
def test_config_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        HLFDConfig(**options)


# ---- independent float64 reference of the four terms, with the stage indices written out by hand --------
def _A(f, p):
    return (f.double().abs() ** p).mean(dim=1, keepdim=True)


def _pool_to(x, size):
    factors = [a // b for a, b in zip(x.shape[2:], size)]
    return (F.avg_pool3d if x.dim() == 5 else F.avg_pool2d)(x, factors)


def _up_to(x, size):
    return F.interpolate(x, size=size, mode="trilinear" if x.dim() == 5 else "bilinear", align_corners=False)


def _to(x, size):
    return _pool_to(x, size) if x.shape[2] >= size[0] and x.shape[-1] >= size[-1] else _up_to(x, size)


def _at(a_s, a_t):
    s = a_s.flatten(1) / a_s.flatten(1).norm(dim=1, keepdim=True)
    t = a_t.flatten(1) / a_t.flatten(1).norm(dim=1, keepdim=True)
    return ((s - t) ** 2).sum(1).mean()


def _combined(features, size, p):
    channels = sum(f.shape[1] for f in features)
    return sum(_to(_A(f, p), size) * f.shape[1] for f in features) / channels


def _feature(s, teachers, p):
    if len(teachers) == 1:  # the student's map onto the teacher's grid
        a_t = _A(teachers[0], p)
        return _at(_to(_A(s, p), a_t.shape[2:]), a_t)
    return _at(_A(s, p), _combined(teachers, s.shape[2:], p))


def _soft(z, T, regions):
    return torch.sigmoid(z.double() / T) if regions else torch.softmax(z.double() / T, 1)


def _kl_per_voxel(zs, q, T, regions):
    z = zs.double() / T
    if regions:
        ps = torch.sigmoid(z)
        return (q * torch.log(q / ps) + (1 - q) * torch.log((1 - q) / (1 - ps))).sum(1)
    return (q * (torch.log(q) - torch.log_softmax(z, 1))).sum(1)


def _pixel(zs, teacher_logits, T, regions, valid, classes, divergence):
    """The student's logits against the mean of the teachers', by loops over samples, channels and classes."""
    grid = zs.shape[2:]
    keep = torch.ones(zs.shape[0], *grid, dtype=torch.bool) if valid is None else valid
    if divergence == "channel_wise":
        total = 0.0
        b, c = zs.shape[:2]
        for i in range(b):
            m = keep[i].flatten()
            for k in range(c):
                qs = [torch.softmax(_to(t.double(), grid)[i, k].flatten()[m] / T, 0) for t in teacher_logits]
                q = sum(qs) / len(qs)
                log_p = torch.log_softmax(zs[i, k].double().flatten()[m] / T, 0)
                total += (q * (torch.log(q) - log_p)).sum()
        return total / (b * c) * T * T
    q = sum(_to(_soft(t, T, regions), grid) for t in teacher_logits) / len(teacher_logits)
    per = _kl_per_voxel(zs, q, T, regions)
    if divergence == "kl":
        return per[keep].mean() * T * T
    per_class = [per[keep & (classes == c)].mean() for c in torch.unique(classes[keep])]
    return sum(per_class) / len(per_class) * T * T


MAPPINGS_BY_HAND = {  # (unified teacher stages, individual (student, teacher stages)): 3D n = 4, 2D n = 5
    ("cross_stage", 4): ((1, 2), [(1, (3,)), (2, (3,))]),
    ("cross_stage", 5): ((1, 2, 3), [(1, (4,)), (2, (4,)), (3, (4,))]),
    ("same_stage", 4): ((0,), [(1, (1,)), (2, (2,)), (3, (3,))]),
    ("same_stage", 5): ((0,), [(1, (1,)), (2, (2,)), (3, (3,)), (4, (4,))]),
    ("neighbouring", 4): ((0, 1), [(1, (1, 2)), (2, (2, 3)), (3, (3,))]),
    ("neighbouring", 5): ((0, 1), [(1, (1, 2)), (2, (2, 3)), (3, (3, 4)), (4, (4,))]),
}
PIXEL_BY_HAND = {4: ((1,), (1, 2)), 5: ((1, 2), (1, 2, 3))}  # unified teacher stages -> 1; final -> each of these


def reference_hlfd(s_enc, t_enc, s_log, t_log, n, cfg, regions, valid, classes):
    p, T, div = cfg.exponent, cfg.temperature, cfg.plfd_divergence
    unified, individual = MAPPINGS_BY_HAND[(cfg.flfd_mapping, n)]
    flfd_u = _at(_A(s_enc[0], p), _combined([t_enc[i] for i in unified], s_enc[0].shape[2:], p))
    flfd_i = sum(_feature(s_enc[s], [t_enc[t] for t in ts], p) for s, ts in individual) / len(individual)
    mix, students = PIXEL_BY_HAND[n]
    final = n - 2
    plfd_u = _pixel(s_log[1], [t_log[j] for j in mix], T, regions, valid[1], classes[1], div)
    plfd_i = sum(_pixel(s_log[j], [t_log[final]], T, regions, valid[j], classes[j], div) for j in students)
    plfd_i = plfd_i / len(students)
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
    classes = {j: torch.randint(0, 4 if regions else 3, (B, *grids[n - 2 - j])) for j in range(n - 1)}
    return n, s_enc, t_enc, s_log, t_log, valid, classes


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("regions", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize(
    "divergence, mapping",
    [
        ("kl", "cross_stage"),
        ("class_balanced_kl", "same_stage"),
        ("channel_wise", "neighbouring"),
        ("channel_wise", "cross_stage"),
    ],
)
def test_hlfd_loss_matches_float64_reference(dim, regions, ignore, divergence, mapping):
    n, s_enc, t_enc, s_log, t_log, valid, classes = _random_captures(dim, regions, ignore)
    cfg = HLFDConfig(
        alpha=0.3,
        beta=0.7,
        unified_weight=0.4,
        individual_weight=0.6,
        temperature=3.0,
        exponent=4.0,
        plfd_divergence=divergence,
        flfd_mapping=mapping,
    )
    got = hlfd_loss(s_enc, t_enc, s_log, t_log, hlfd_stage_mapping(n, mapping), cfg, regions, valid, classes)
    ref = reference_hlfd(s_enc, t_enc, s_log, t_log, n, cfg, regions, valid, classes)
    for name, value in ref.items():
        assert got[name].item() == pytest.approx(value.item(), rel=1e-4), name


def test_ignored_voxels_do_not_count():
    n, s_enc, t_enc, s_log, t_log, _, _ = _random_captures(3, False, False)
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
        assert student.decoder.seg_layers[1].weight.grad.abs().sum() > 0  # a head nnU-Net trains
        assert student.decoder.seg_layers[0].weight.grad is None  # the lowest head: nnU-Net's weight 0, no KD


def test_teacher_with_other_depth_is_refused():
    student = make_unet(3, 4)
    distiller = Distiller(HLFD(), regions=False)
    teacher = make_unet(2, 8)  # 5 stages
    with pytest.raises(StageLayoutError, match="must align"):
        distiller.attach(student, teacher, 3)


# ---- the untrained lowest deep-supervision head ---------------------------------------------------------------
def _hlfd_terms(distiller, student, data, targets=None):
    from nnunet_hlfd.methods.base import by_decoder_stage

    output, teacher = distiller.forward(student, data)
    targets = targets if targets is not None else [torch.randint(0, 3, (o.shape[0], 1, *o.shape[2:])) for o in output]
    terms = distiller.losses(output, teacher, {}, by_decoder_stage(targets, distiller.n_stages))
    return {k: v.detach() for k, v in terms.items()}, targets


@pytest.mark.parametrize(
    "config",
    [
        HLFDConfig(),
        HLFDConfig(plfd_heads="adapters"),
        HLFDConfig(plfd_divergence="class_balanced_kl", flfd_mapping="same_stage"),
        HLFDConfig(plfd_divergence="channel_wise", flfd_mapping="neighbouring"),
    ],
)
@pytest.mark.parametrize("dim", [2, 3])
def test_a_random_lowest_teacher_head_gives_the_same_loss(config, dim):
    """nnU-Net never trains decoder.seg_layers[0] (deep-supervision weight 0): HLFD must not read it."""
    student, teacher = make_unet(dim, 4), make_unet(dim, 8)
    distiller = Distiller(HLFD(config), regions=False)
    distiller.attach(student, teacher, num_classes=3)
    data = torch.randn(2, 1, *PATCH[dim])
    before, targets = _hlfd_terms(distiller, student, data)
    with torch.no_grad():
        head = teacher.decoder.seg_layers[0]
        head.weight.copy_(torch.randn_like(head.weight) * 5)
        head.bias.copy_(torch.randn_like(head.bias) * 5)
    after, _ = _hlfd_terms(distiller, student, data, targets)
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_rampup_scales_the_total_from_zero():
    method = HLFD(HLFDConfig(rampup_fraction=0.2))
    assert [method.weight_at(x) for x in (0.0, 0.05, 0.1, 0.2, 0.9)] == pytest.approx([0, 0.25, 0.5, 1, 1])
    assert HLFD().weight_at(0.0) == 1.0
    student, teacher = make_unet(3, 4), make_unet(3, 8)
    distiller = Distiller(method, regions=False)
    distiller.attach(student, teacher, num_classes=3)
    data = torch.randn(2, 1, *PATCH[3])
    output, captured = distiller.forward(student, data)
    early = distiller.losses(output, captured, {}, progress=0.1)
    output, captured = distiller.forward(student, data)
    late = distiller.losses(output, captured, {}, progress=0.5)
    assert early["total"].item() == pytest.approx(0.5 * late["total"].item(), rel=1e-6)
    assert early["plfd_unified"].item() == pytest.approx(late["plfd_unified"].item(), rel=1e-6)  # terms unscaled
