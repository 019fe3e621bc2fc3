"""The reference class of every voxel, from nnU-Net's (deep-supervision) segmentation targets."""

import torch


def voxel_classes(target: torch.Tensor, regions: bool, num_outputs: int) -> torch.Tensor:
    """(B, *spatial) class of every voxel from nnU-Net's target: the label, or the code of its set of regions
    (Σ_r 2^r·[voxel in region r]; a region target's extra ignore channel, if any, is not part of the code)."""
    if not regions:
        return target[:, 0].long()
    codes = 2 ** torch.arange(num_outputs, device=target.device).view(1, -1, *[1] * (target.ndim - 2))
    return (target[:, :num_outputs].long() * codes).sum(1)
