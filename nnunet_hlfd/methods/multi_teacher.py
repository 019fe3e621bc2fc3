"""Combining several teachers' soft predictions (limit-trained multi-teacher KD; the method is not wired up yet).

Each teacher k gives probabilities p_k (softmax over classes for labels, per-channel sigmoid for regions).

- ``mean``: p = (1/K) Σ_k p_k.
- ``confidence``: p(x) = Σ_k w_k(x) p_k(x) with w_k(x) = conf_k(x) / Σ_j conf_j(x), where conf_k(x) is teacher
  k's confidence: its largest class probability at voxel x (labels), or the mean over channels of
  max(p, 1 − p) (regions). A teacher that is unsure where another is sure counts less there.
- ``sample_confidence``: the same with each teacher's confidence averaged over the sample's voxels, i.e. one
  weight per teacher and sample.
"""

from __future__ import annotations

import torch

COMBINATIONS = ("mean", "confidence", "sample_confidence")


def teacher_confidence(probabilities: torch.Tensor, regions: bool) -> torch.Tensor:
    """(B, 1, *spatial) confidence of one teacher's (B, C, *spatial) probabilities."""
    if regions:
        return torch.maximum(probabilities, 1 - probabilities).mean(1, keepdim=True)
    return probabilities.max(1, keepdim=True).values


def combine_probabilities(
    probabilities: list[torch.Tensor], mode: str = "mean", regions: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The combined (B, C, *spatial) probabilities and the (K, B, 1, *spatial or 1s) teacher weights."""
    if mode not in COMBINATIONS:
        raise ValueError(f"unknown combination {mode!r}: choose one of {COMBINATIONS}")
    stacked = torch.stack([p.float() for p in probabilities])  # K, B, C, *spatial
    spatial_dims = tuple(range(3, stacked.ndim))
    if mode == "mean":
        weights = torch.full_like(stacked[:, :, :1], 1.0 / len(probabilities))
    else:
        confidence = torch.stack([teacher_confidence(p, regions) for p in stacked])
        if mode == "sample_confidence":
            confidence = confidence.mean(dim=spatial_dims, keepdim=True)
        weights = confidence / confidence.sum(0, keepdim=True).clamp_min(1e-12)
    return (weights * stacked).sum(0), weights
