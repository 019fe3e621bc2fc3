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
