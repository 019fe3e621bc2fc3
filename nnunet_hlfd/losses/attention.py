"""Attention-map distillation (the IMD of EMKD/HLFD, Zagoruyko & Komodakis' attention transfer with exponent p)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nnunet_hlfd.losses.resize import resize


def attention_map(feature: torch.Tensor, p: float = 4.0) -> torch.Tensor:
    """Channel mean of ``|F|^p``: a (B, 1, *spatial) float32 map, not yet normalised.

    Computed in float32 because ``F^4`` overflows float16 for |F| > ~16. ``abs`` makes odd exponents
    meaningful; for the usual even p it changes nothing.
    """
    f = feature.float()
    if p == 2:
        powered = f * f
    elif p == 4:  # the default: two multiplications are cheaper than pow, forward and backward
        powered = f * f
        powered = powered * powered
    else:
        powered = f.abs().pow(p)
    return powered.mean(dim=1, keepdim=True)


def combined_attention_map(features: Sequence[torch.Tensor], size: Sequence[int], p: float = 4.0) -> torch.Tensor:
    """Attention map of the channel concatenation of ``features`` (each resized to ``size``).

    The channel mean of a concatenation is the channel-count-weighted mean of the per-tensor channel means,
    so each map is pooled first and only single-channel maps are resized: the concatenated tensor (896
    channels at full resolution in the authors' 2D code) is never materialised.
    """
    total_channels = sum(f.shape[1] for f in features)
    return sum(resize(attention_map(f, p), size) * (f.shape[1] / total_channels) for f in features)


def attention_transfer(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance between the L2-normalised maps: summed over positions, mean over the batch.

    Both maps must be on the same grid. Because the maps are unit vectors the value lies in [0, 4]
    whatever the number of positions, so 2D and 3D terms have the same scale.
    """
    if student_map.shape != teacher_map.shape:
        raise ValueError(f"attention maps differ in shape: {tuple(student_map.shape)} vs {tuple(teacher_map.shape)}")
    s = F.normalize(student_map.flatten(1), dim=1)
    t = F.normalize(teacher_map.flatten(1), dim=1)
    return (s - t).pow(2).sum(dim=1).mean()
