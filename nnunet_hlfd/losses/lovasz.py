"""Lovász losses (Berman, Rannen Triki & Blaschko, CVPR 2018): convex surrogates of the Jaccard loss.

The Lovász extension of the Jaccard loss Δ_c(M) = |M| / |{y = c} ∪ M| of a set M of mispredicted voxels is,
for a vector m of per-voxel errors sorted in decreasing order (m_π1 ≥ m_π2 ≥ ...),

    Δ̄_c(m) = Σ_i m_πi · (Δ_c({π1..πi}) − Δ_c({π1..πi−1})).

- ``lovasz_softmax`` (labels): m = |1[y = c] − p_c| with softmax probabilities p, averaged over the classes
  present in the target;
- ``lovasz_hinge`` (regions, binary per channel): m = relu(1 − s·z) with logits z and signs s = ±1, averaged
  over the regions.

Voxels outside ``valid`` (nnU-Net's ignore label) are left out. Both flatten the batch (the paper's
``per_image=False``) and compute in float32.
"""

from __future__ import annotations

import torch


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Δ_c({π1..πi}) − Δ_c({π1..πi−1}) for every i, from the foreground indicator in the errors' sort order."""
    foreground = gt_sorted.sum()
    intersection = foreground - gt_sorted.cumsum(0)
    union = foreground + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def _lovasz_extension(errors: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    errors_sorted, order = torch.sort(errors, descending=True)
    return torch.dot(errors_sorted, lovasz_grad(foreground[order]))


def lovasz_softmax(
    probabilities: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Lovász-softmax of (B, C, *spatial) probabilities against (B, *spatial) integer labels."""
    num_classes = probabilities.shape[1]
    p = probabilities.float().movedim(1, -1).reshape(-1, num_classes)
    y = target.reshape(-1).long()
    if valid is not None:
        keep = valid.reshape(-1).bool()
        p, y = p[keep], y[keep]
    losses = []
    for c in range(num_classes):
        foreground = (y == c).float()
        if foreground.sum() == 0:
            continue  # the paper's classes='present'
        losses.append(_lovasz_extension((foreground - p[:, c]).abs(), foreground))
    if not losses:
        return probabilities.sum() * 0.0
    return torch.stack(losses).mean()


def lovasz_hinge(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Lovász hinge of (B, R, *spatial) logits against (B, R, *spatial) binary region targets, mean over R."""
    num_regions = logits.shape[1]
    z = logits.float().movedim(1, -1).reshape(-1, num_regions)
    t = targets.float().movedim(1, -1).reshape(-1, num_regions)
    if valid is not None:
        keep = valid.reshape(-1).bool()
        z, t = z[keep], t[keep]
    losses = []
    for r in range(num_regions):
        signs = 2.0 * t[:, r] - 1.0
        losses.append(_lovasz_extension(torch.relu(1.0 - z[:, r] * signs), t[:, r]))
    return torch.stack(losses).mean()
