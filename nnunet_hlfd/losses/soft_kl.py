"""Temperature-softened KL divergence between teacher and student predictions, per voxel.

Softmax form for label-based datasets (one distribution over classes per voxel); sigmoid form for
region-based datasets, where every region is an independent Bernoulli variable and the KL of the joint
is the sum of the per-region Bernoulli KLs.
"""

import torch
import torch.nn.functional as F


def soft_probabilities(logits: torch.Tensor, temperature: float, regions: bool) -> torch.Tensor:
    """Teacher soft targets in float32: softmax over channels, or per-channel sigmoid for regions."""
    z = logits.float() / temperature
    return torch.sigmoid(z) if regions else torch.softmax(z, dim=1)


def soft_kl(
    student_logits: torch.Tensor,
    teacher_probabilities: torch.Tensor,
    temperature: float,
    regions: bool,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T² · mean over valid voxels of KL(teacher ‖ student)``, the KL summed over classes (or regions).

    ``student_logits`` (B, C, *spatial); ``teacher_probabilities`` on the same grid, already softened with
    the same temperature (see :func:`soft_probabilities`); ``valid`` an optional boolean (B, *spatial) mask,
    False where nnU-Net's ignore label is. The reduction is independent of the number of classes, unlike the
    authors' ``view(-1, 2)`` form, which divides by C/2.
    """
    if student_logits.shape != teacher_probabilities.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher probabilities "
            f"{tuple(teacher_probabilities.shape)} must be on the same grid"
        )
    z = student_logits.float() / temperature
    q = teacher_probabilities.float()
    if regions:
        kl = torch.xlogy(q, q) - q * F.logsigmoid(z) + torch.xlogy(1 - q, 1 - q) - (1 - q) * F.logsigmoid(-z)
    else:
        kl = torch.xlogy(q, q) - q * F.log_softmax(z, dim=1)
    per_voxel = kl.sum(dim=1)
    if valid is None:
        mean = per_voxel.mean()
    else:
        valid = valid.to(per_voxel.dtype)
        mean = (per_voxel * valid).sum() / valid.sum().clamp_min(1.0)
    return mean * temperature**2
