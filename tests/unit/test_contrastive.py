"""Multi-scale contrastive KD: the supervised contrastive loss against a float64 loop, class-balanced anchor
sampling, region classes, and the feature term."""

import numpy as np
import pytest
import torch

from nnunet_hlfd.methods.base import Captured
from nnunet_hlfd.methods.contrastive import (
    MultiScaleContrastiveConfig,
    multi_scale_contrastive_loss,
    sample_anchors,
    supervised_contrastive,
    voxel_classes,
)


def supcon_by_loop(s: np.ndarray, t: np.ndarray, labels: np.ndarray, tau: float) -> float:
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    losses = []
    for i in range(len(s)):
        denominator = sum(np.exp(s[i] @ t[a] / tau) for a in range(len(t)))
        positives = [p for p in range(len(t)) if labels[p] == labels[i]]
        losses.append(-np.mean([np.log(np.exp(s[i] @ t[p] / tau) / denominator) for p in positives]))
    return float(np.mean(losses))


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_supervised_contrastive_against_a_float64_loop(tau):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    labels = rng.integers(0, 3, 12)
    value = supervised_contrastive(torch.tensor(s), torch.tensor(t), torch.tensor(labels), tau)
    assert value.item() == pytest.approx(supcon_by_loop(s, t, labels, tau), rel=1e-5)


def test_matching_embeddings_score_lower_than_shuffled_ones():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    prototypes = torch.randn(4, 16)
    t = prototypes[labels] + 0.1 * torch.randn(32, 16)
    aligned = supervised_contrastive(t + 0.1 * torch.randn(32, 16), t, labels, 0.1)
    shuffled = supervised_contrastive(t[torch.randperm(32)], t, labels, 0.1)
    assert aligned < shuffled


def test_anchors_are_class_balanced_valid_and_bounded():
    classes = torch.zeros(2, 10, 10, dtype=torch.long)
    classes[0, :2, :2] = 1  # 4 voxels of class 1, 8 of class 2, the rest 0
    classes[1, 5:7, 5:9] = 2
    valid = torch.ones(2, 10, 10, dtype=torch.bool)
    valid[0, 0, 0] = False
    index = sample_anchors(classes, valid, per_class=5, generator=torch.Generator().manual_seed(0))
    drawn = classes.reshape(-1)[index]
    assert torch.bincount(drawn).tolist() == [5, 3, 5]  # at most 5 each; class 1 has 3 valid voxels
    assert valid.reshape(-1)[index].all() and index.unique().numel() == index.numel()


def test_region_classes_encode_the_set_of_regions():
    target = torch.zeros(1, 3, 2, 2)  # 2 regions + ignore channel
    target[0, 0] = torch.tensor([[1, 1], [0, 0]])
    target[0, 1] = torch.tensor([[1, 0], [1, 0]])
    assert voxel_classes(target, True, 2)[0].tolist() == [[3, 1], [2, 0]]
    labels = torch.tensor([[[[0, 2], [1, 1]]]])
    assert voxel_classes(labels, False, 3)[0].tolist() == [[0, 2], [1, 1]]


def test_feature_term_is_the_mean_mse_over_scales_and_single_class_scales_are_skipped():
    torch.manual_seed(1)
    encoder = {i: torch.randn(2, 4, 8 >> i, 8 >> i) for i in range(3)}
    decoder = {j: torch.randn(2, 4, 2 << j, 2 << j) for j in range(2)}
    teacher = Captured(
        3,
        encoder={i: torch.randn_like(f) for i, f in encoder.items()},
        decoder={j: torch.randn_like(f) for j, f in decoder.items()},
    )
    classes = {0: torch.zeros(2, 2, 2, dtype=torch.long), 1: torch.randint(0, 3, (2, 4, 4))}
    config = MultiScaleContrastiveConfig(feature_weight=0.5, contrastive_weight=2.0, anchors_per_class=100)
    terms = multi_scale_contrastive_loss((encoder, decoder), teacher, classes, {}, config)
    pairs = [(encoder[i], teacher.encoder[i]) for i in encoder] + [(decoder[j], teacher.decoder[j]) for j in decoder]
    mse = np.mean([((s.double() - t.double()) ** 2).mean().item() for s, t in pairs])
    assert terms["feature"].item() == pytest.approx(0.5 * mse, rel=1e-5)
    # stage 0 has one class: only stage 1 counts, every voxel drawn (at most 32 per class)
    flat = lambda f: f.movedim(1, -1).reshape(-1, 4).double().numpy()  # noqa: E731
    expected = supcon_by_loop(flat(decoder[1]), flat(teacher.decoder[1]), classes[1].reshape(-1).numpy(), 0.1)
    assert terms["contrastive"].item() == pytest.approx(2.0 * expected, rel=1e-4)
    assert terms["total"].item() == pytest.approx(terms["feature"].item() + terms["contrastive"].item())
