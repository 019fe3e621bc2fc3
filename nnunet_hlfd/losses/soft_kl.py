"""Temperature-softened KL divergence between teacher and student predictions, per voxel.

Softmax form for label-based datasets (one distribution over classes per voxel); sigmoid form for
region-based datasets, where every region is an independent Bernoulli variable and the KL of the joint
is the sum of the per-region Bernoulli KLs. Two reductions over voxels: the plain mean, and a class-balanced
mean (the mean within each reference class, then over the classes).
"""

import torch
import torch.nn.functional as F


def soft_probabilities(logits: torch.Tensor, temperature: float, regions: bool) -> torch.Tensor:
    """Teacher soft targets in float32: softmax over channels, or per-channel sigmoid for regions."""
    z = logits.float() / temperature
    return torch.sigmoid(z) if regions else torch.softmax(z, dim=1)


def per_voxel_kl(
    student_logits: torch.Tensor, teacher_probabilities: torch.Tensor, temperature: float, regions: bool
) -> torch.Tensor:
    """(B, *spatial) float32 KL(teacher ‖ student) of every voxel, summed over classes (or regions)."""
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
    return kl.sum(dim=1)


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
    per_voxel = per_voxel_kl(student_logits, teacher_probabilities, temperature, regions)
    if valid is None:
        mean = per_voxel.mean()
    else:
        valid = valid.to(per_voxel.dtype)
        mean = (per_voxel * valid).sum() / valid.sum().clamp_min(1.0)
    return mean * temperature**2


def class_balanced_soft_kl(
    student_logits: torch.Tensor,
    teacher_probabilities: torch.Tensor,
    temperature: float,
    regions: bool,
    classes: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T² ·`` the mean over the reference classes present of the mean per-voxel KL within each class.

    ``classes`` (B, *spatial): every voxel's reference class (the ground truth, see
    :func:`nnunet_hlfd.losses.reference_classes.voxel_classes`); classes are pooled over the batch and only the
    valid voxels count. A per-voxel mean lets the background, most of a patch, decide the gradient; here a tumour
    of a hundred voxels weighs as much as the background of the whole patch.
    """
    per_voxel = per_voxel_kl(student_logits, teacher_probabilities, temperature, regions).reshape(-1)
    classes = classes.reshape(-1).long()
    if classes.shape != per_voxel.shape:
        raise ValueError(f"{classes.numel()} reference classes for {per_voxel.numel()} voxels")
    if valid is not None:
        keep = valid.reshape(-1).bool()
        per_voxel, classes = per_voxel[keep], classes[keep]
    if per_voxel.numel() == 0:
        return per_voxel.sum() * temperature**2  # nothing valid: zero, still attached to the graph
    present, index = torch.unique(classes, return_inverse=True)
    sums = per_voxel.new_zeros(len(present)).index_add_(0, index, per_voxel)
    counts = per_voxel.new_zeros(len(present)).index_add_(0, index, torch.ones_like(per_voxel))
    return (sums / counts).mean() * temperature**2
