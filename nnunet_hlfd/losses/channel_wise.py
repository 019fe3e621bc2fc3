"""Channel-wise divergence (Shu et al., ICCV 2021, "CWD"): every class channel of a prediction is a distribution
over the spatial positions of the patch (a softmax of z/T over the voxels), compared channel by channel.

Unlike a per-voxel KL, which weighs every voxel equally and is therefore dominated by the background, each
channel counts once whatever the size of its structure: a small tumour's channel weighs as much as the
background's. The same form serves label and region datasets (it never normalises across channels).
"""

import torch
import torch.nn.functional as F

MASKED_LOGIT = -1e9  # finite, so masked voxels get probability 0 and zero (not NaN) gradients


def _flat(logits: torch.Tensor, temperature: float, valid: torch.Tensor | None) -> torch.Tensor:
    b, c = logits.shape[:2]
    z = logits.float().reshape(b, c, -1) / temperature
    if valid is not None:
        z = z.masked_fill(~valid.reshape(b, 1, -1).bool(), MASKED_LOGIT)
    return z


def spatial_probabilities(logits: torch.Tensor, temperature: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, N) float32: per sample and channel, the softmax of z/T over the N positions (0 where not ``valid``)."""
    return torch.softmax(_flat(logits, temperature, valid), dim=2)


def channel_wise_kl(
    student_logits: torch.Tensor,
    teacher_spatial: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T² · Σ_{b,c} KL(q_bc ‖ p_bc) / (B·C)``, KL over positions; ``teacher_spatial`` from
    :func:`spatial_probabilities` (or a mean of several), on the student's grid."""
    b, c = student_logits.shape[:2]
    if teacher_spatial.shape != (b, c, student_logits[0, 0].numel()):
        raise ValueError(
            f"teacher distributions {tuple(teacher_spatial.shape)} do not match the student logits "
            f"{tuple(student_logits.shape)}"
        )
    q = teacher_spatial.float()
    kl = torch.xlogy(q, q) - q * F.log_softmax(_flat(student_logits, temperature, valid), dim=2)
    return kl.sum() / (b * c) * temperature**2


def cwd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """CWD of two predictions on the same grid; voxels under the ignore label leave both distributions."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"CWD needs equal shapes, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    return channel_wise_kl(
        student_logits, spatial_probabilities(teacher_logits, temperature, valid), temperature, valid
    )
