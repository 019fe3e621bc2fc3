"""Lovász losses against their definition, evaluated set by set in float64."""

import numpy as np
import pytest
import torch

from nnunet_hlfd.losses.lovasz import lovasz_hinge, lovasz_softmax


def jaccard_loss(mispredicted: set, foreground: set) -> float:
    return len(mispredicted) / len(foreground | mispredicted) if mispredicted else 0.0


def lovasz_extension_by_sets(errors: np.ndarray, foreground: np.ndarray) -> float:
    """Σ_i m_πi (Δ({π1..πi}) − Δ({π1..πi−1})), Δ evaluated on each prefix set."""
    order = np.argsort(-errors, kind="stable")
    fg = set(np.flatnonzero(foreground).tolist())
    total, previous, prefix = 0.0, 0.0, set()
    for i in order:
        prefix.add(int(i))
        current = jaccard_loss(prefix, fg)
        total += errors[i] * (current - previous)
        previous = current
    return total


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 4, 3, 4, 5)], ids=["2d", "3d"])
def test_lovasz_softmax_matches_the_definition(shape):
    torch.manual_seed(0)
    probabilities = torch.softmax(torch.randn(shape, dtype=torch.float64), 1)
    target = torch.randint(0, shape[1] - 1, (shape[0], *shape[2:]))  # the last class absent: not averaged
    p = probabilities.movedim(1, -1).reshape(-1, shape[1]).numpy()
    y = target.reshape(-1).numpy()
    expected = np.mean(
        [lovasz_extension_by_sets(np.abs((y == c) - p[:, c]), y == c) for c in range(shape[1]) if (y == c).any()]
    )
    assert lovasz_softmax(probabilities, target).item() == pytest.approx(expected, rel=1e-5)


def test_lovasz_softmax_of_hard_predictions_is_one_minus_iou():
    target = torch.tensor([[0, 0, 1, 1, 2, 2, 2, 0]])
    predicted = torch.tensor([[0, 1, 1, 1, 2, 0, 2, 0]])
    one_hot = torch.nn.functional.one_hot(predicted, 3).movedim(-1, 1).float()
    ious = [2 / 4, 2 / 3, 2 / 3]  # per class: |P∩T| / |P∪T|
    assert lovasz_softmax(one_hot, target).item() == pytest.approx(np.mean([1 - i for i in ious]))


def test_ignored_voxels_are_left_out():
    torch.manual_seed(1)
    probabilities = torch.softmax(torch.randn(1, 3, 4, 5), 1)
    target = torch.randint(0, 3, (1, 4, 5))
    valid = torch.rand(1, 4, 5) > 0.4
    kept = lovasz_softmax(probabilities[:, :, valid[0]], target[:, valid[0]])
    assert lovasz_softmax(probabilities, target, valid).item() == pytest.approx(kept.item())


def test_lovasz_hinge_matches_the_definition_per_region():
    torch.manual_seed(2)
    logits = torch.randn(2, 2, 4, 4, 3, dtype=torch.float64)
    targets = (torch.rand(2, 2, 4, 4, 3) > 0.6).float()
    z = logits.movedim(1, -1).reshape(-1, 2).numpy()
    t = targets.movedim(1, -1).reshape(-1, 2).numpy()
    expected = np.mean(
        [lovasz_extension_by_sets(np.maximum(0, 1 - z[:, r] * (2 * t[:, r] - 1)), t[:, r] > 0) for r in range(2)]
    )
    loss = lovasz_hinge(logits.requires_grad_(), targets)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
