"""Each loss term against values computed independently: by hand, or by a float64 re-derivation."""

import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_hlfd.losses import (
    attention_map,
    attention_transfer,
    combined_attention_map,
    resize,
    soft_kl,
    soft_probabilities,
)

torch.manual_seed(0)


# ---- independent float64 references (plain formulas, no package code) ------------------------------------
def ref_attention(f: torch.Tensor, p: float) -> torch.Tensor:
    """(B, P): channel mean of |f|^p, L2-normalised per sample."""
    a = (f.double().abs() ** p).mean(dim=1).reshape(f.shape[0], -1)
    return a / a.norm(dim=1, keepdim=True)


def ref_at_loss(a_s: torch.Tensor, a_t: torch.Tensor) -> float:
    return float(((a_s - a_t) ** 2).sum(dim=1).mean())


def ref_kl_softmax(zs, q, T, valid=None) -> float:
    ps = torch.softmax(zs.double() / T, dim=1)
    q = q.double()
    per = (q * (torch.log(q) - torch.log(ps))).sum(dim=1)
    if valid is not None:
        return float(per[valid].mean() * T * T)
    return float(per.mean() * T * T)


def ref_kl_sigmoid(zs, q, T, valid=None) -> float:
    ps = torch.sigmoid(zs.double() / T)
    q = q.double()
    per = (q * torch.log(q / ps) + (1 - q) * torch.log((1 - q) / (1 - ps))).sum(dim=1)
    if valid is not None:
        return float(per[valid].mean() * T * T)
    return float(per.mean() * T * T)


# ---- by hand -------------------------------------------------------------------------------------------
def test_attention_transfer_by_hand():
    # two positions; student attends only to the first, teacher only to the second: ||e1 - e2||^2 = 2
    s = torch.tensor([[1.0, 0.0]]).view(1, 1, 2)
    t = torch.tensor([[0.0, 3.0]]).view(1, 1, 2)
    assert attention_transfer(s, t).item() == pytest.approx(2.0)
    # identical direction, different scale: 0
    assert attention_transfer(s, 5 * s).item() == pytest.approx(0.0)


def test_attention_map_by_hand():
    # channels (1, -2) at one position, (0, 1) at another; p = 2 -> means (1+4)/2, (0+1)/2
    f = torch.tensor([[[1.0, 0.0], [-2.0, 1.0]]])  # (B=1, C=2, P=2)
    assert attention_map(f, p=2).flatten().tolist() == pytest.approx([2.5, 0.5])


def test_soft_kl_by_hand():
    # teacher (0.5, 0.5); student logits (0, ln 3) at T = 1 -> student (0.25, 0.75)
    # KL = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)
    zs = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    q = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    assert soft_kl(zs, q, temperature=1.0, regions=False).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    # T = 2 multiplies by T^2 after softening: student logits / 2 -> (0, ln 3 / 2)
    ps = torch.softmax(torch.tensor([0.0, math.log(3.0) / 2]), 0)
    expected = 4 * sum(0.5 * math.log(0.5 / float(p)) for p in ps)
    assert soft_kl(zs, q, temperature=2.0, regions=False).item() == pytest.approx(expected, rel=1e-5)


def test_soft_kl_sigmoid_by_hand():
    # one region, teacher p = 0.5, student logit 0 -> p = 0.5: KL 0; student logit ln 3 -> p = 0.75
    q = torch.tensor([0.5]).view(1, 1, 1)
    assert soft_kl(torch.zeros(1, 1, 1), q, 1.0, regions=True).item() == pytest.approx(0.0, abs=1e-7)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    z = torch.tensor([math.log(3.0)]).view(1, 1, 1)
    assert soft_kl(z, q, 1.0, regions=True).item() == pytest.approx(expected, rel=1e-5)


# ---- against float64 re-derivations, 2D and 3D ------------------------------------------------------------
@pytest.mark.parametrize("spatial", [(6, 8), (4, 6, 8)])
@pytest.mark.parametrize("p", [2.0, 4.0])
def test_attention_transfer_matches_float64(spatial, p):
    fs = torch.randn(3, 5, *spatial)
    ft = torch.randn(3, 9, *spatial)
    got = attention_transfer(attention_map(fs, p), attention_map(ft, p)).item()
    assert got == pytest.approx(ref_at_loss(ref_attention(fs, p), ref_attention(ft, p)), rel=1e-5)


@pytest.mark.parametrize("spatial", [(4, 4), (2, 4, 4)])
def test_combined_attention_map_equals_map_of_the_concatenation(spatial):
    a, b = torch.randn(2, 3, *spatial), torch.randn(2, 7, *spatial)
    combined = combined_attention_map([a, b], spatial, p=4)
    explicit = (torch.cat([a, b], 1).double() ** 4).mean(1, keepdim=True)
    torch.testing.assert_close(combined.double(), explicit, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spatial", [(8, 8), (4, 8, 8)])
def test_resize_down_is_average_pooling_and_keeps_probabilities_normalised(spatial):
    x = torch.softmax(torch.randn(2, 3, *spatial), dim=1)
    small = [s // 2 for s in spatial]
    pool = F.avg_pool2d if len(spatial) == 2 else F.avg_pool3d
    torch.testing.assert_close(resize(x, small), pool(x, 2))
    torch.testing.assert_close(resize(x, small).sum(1), torch.ones(2, *small))
    assert resize(x, spatial) is x


def test_resize_handles_anisotropic_strides():
    x = torch.randn(1, 1, 4, 8, 8)
    assert resize(x, (4, 4, 4)).shape == (1, 1, 4, 4, 4)
    torch.testing.assert_close(resize(x, (4, 4, 4)), F.avg_pool3d(x, (1, 2, 2)))
    assert resize(x, (8, 16, 16)).shape == (1, 1, 8, 16, 16)


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_soft_kl_softmax_matches_float64(spatial, T):
    zs, zt = torch.randn(2, 4, *spatial) * 3, torch.randn(2, 4, *spatial) * 3
    q = soft_probabilities(zt, T, regions=False)
    valid = torch.rand(2, *spatial) > 0.3
    assert soft_kl(zs, q, T, False).item() == pytest.approx(ref_kl_softmax(zs, q, T), rel=1e-5)
    assert soft_kl(zs, q, T, False, valid).item() == pytest.approx(ref_kl_softmax(zs, q, T, valid), rel=1e-5)


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
def test_soft_kl_sigmoid_matches_float64(spatial):
    zs, zt = torch.randn(2, 3, *spatial) * 3, torch.randn(2, 3, *spatial) * 3
    q = soft_probabilities(zt, 4.0, regions=True)
    valid = torch.rand(2, *spatial) > 0.3
    assert soft_kl(zs, q, 4.0, True).item() == pytest.approx(ref_kl_sigmoid(zs, q, 4.0), rel=1e-5)
    assert soft_kl(zs, q, 4.0, True, valid).item() == pytest.approx(ref_kl_sigmoid(zs, q, 4.0, valid), rel=1e-5)


def test_soft_kl_is_independent_of_the_number_of_classes():
    # the authors' view(-1, 2) divides by C/2; the per-voxel mean must not depend on padding classes away
    zs = torch.randn(2, 2, 3, 3)
    q = soft_probabilities(torch.randn(2, 2, 3, 3), 1.0, False)
    pad_s = torch.cat([zs, torch.full((2, 2, 3, 3), -1e4)], 1)
    pad_q = torch.cat([q, torch.zeros(2, 2, 3, 3)], 1)
    assert soft_kl(pad_s, pad_q, 1.0, False).item() == pytest.approx(soft_kl(zs, q, 1.0, False).item(), rel=1e-5)


def test_attention_map_is_float32_under_half_inputs():
    f = (torch.ones(1, 2, 4, 4) * 20).half()  # 20^4 = 160000 overflows float16
    a = attention_map(f, 4)
    assert a.dtype == torch.float32 and torch.isfinite(a).all() and a.max().item() == pytest.approx(160000)
