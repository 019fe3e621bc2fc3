"""Structured KD (Liu et al., CVPR 2019), without the adversarial (holistic) term.

- pair-wise: the features before the segmentation head (the student's and teacher's last decoder stage)
  are max-pooled into nodes (kernel = ``pool_scale`` × the feature size, ceil mode), L2-normalised over
  channels; the node-by-node cosine affinity matrices of student and teacher are matched:
  Σ (S_S − S_T)² / N² averaged over the batch. Channel-agnostic, so no adapter.
- pixel-wise: per-voxel KL at T = 1 on the final prediction (the repository uses the cross-entropy form,
  which differs by the teacher's entropy and has the same gradient).

Defaults from the authors' repository: λ_pa = 0.5, λ_pi = 10, pool_scale 0.5.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nnunet_hlfd.losses import soft_kl, soft_probabilities
from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps


@dataclass(frozen=True)
class StructuredKDConfig:
    pairwise_weight: float = 0.5
    pixelwise_weight: float = 10.0
    pool_scale: float = 0.5


def _nodes(feature: torch.Tensor, pool_scale: float) -> torch.Tensor:
    kernel = [max(1, math.ceil(size * pool_scale)) for size in feature.shape[2:]]
    pool = F.max_pool3d if feature.dim() == 5 else F.max_pool2d
    pooled = pool(feature.float(), kernel_size=kernel, stride=kernel, ceil_mode=True)
    return F.normalize(pooled.flatten(2), dim=1)  # (B, C, N)


def pairwise_similarity_loss(student: torch.Tensor, teacher: torch.Tensor, pool_scale: float = 0.5) -> torch.Tensor:
    """Mean over the batch of Σ_{m,n} (S_S − S_T)² / N², S the cosine affinities of the N pooled nodes."""
    with torch.autocast(student.device.type, enabled=False):  # affinities in float32, also under AMP
        s, t = _nodes(student, pool_scale), _nodes(teacher, pool_scale)
        n = s.shape[2]
        affinity_s = s.transpose(1, 2) @ s
        affinity_t = t.transpose(1, 2) @ t
        return ((affinity_s - affinity_t) ** 2).sum(dim=(1, 2)).mean() / n**2


class StructuredKD(DistillationMethod):
    name = "structured_kd"
    term_names = ("pairwise", "pixelwise")

    def __init__(self, config: StructuredKDConfig = StructuredKDConfig()):
        self.config = config

    def student_taps(self, n_stages: int) -> Taps:
        return Taps(decoder=(n_stages - 2,))

    def teacher_taps(self, n_stages: int) -> Taps:
        return Taps(decoder=(n_stages - 2,))

    def loss(
        self, student: Captured, teacher: Captured, adapters, valid, regions: bool, targets=None
    ) -> dict[str, torch.Tensor]:
        final = teacher.final
        pairwise = pairwise_similarity_loss(student.decoder[final], teacher.decoder[final], self.config.pool_scale)
        target = soft_probabilities(teacher.logits[final], 1.0, regions)
        pixelwise = soft_kl(student.logits[final], target, 1.0, regions, valid.get(final))
        total = self.config.pairwise_weight * pairwise + self.config.pixelwise_weight * pixelwise
        return {"pairwise": pairwise, "pixelwise": pixelwise, "total": total}
