"""Resizing between the grids of different stages (2D and 3D, anisotropic strides included)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a (B, C, *spatial) tensor to ``size``.

    Shrinking uses area averaging (exact average pooling for nnU-Net's integer strides, and it keeps soft
    probabilities normalised); growing uses (bi/tri)linear interpolation with ``align_corners=False``.
    ``size`` is given explicitly rather than as a scale factor because nnU-Net strides can be
    anisotropic, e.g. [1, 2, 2].
    """
    size = tuple(int(s) for s in size)
    current = tuple(x.shape[2:])
    if current == size:
        return x
    if len(size) != len(current):
        raise ValueError(f"cannot resize a {len(current)}D map {current} to a {len(size)}D grid {size}")
    if all(t <= s for t, s in zip(size, current)):
        return F.interpolate(x, size=size, mode="area")
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(x, size=size, mode=mode, align_corners=False)
