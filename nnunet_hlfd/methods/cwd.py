"""Channel-wise distillation (Shu et al., ICCV 2021) on the final prediction.

Each channel's logits are turned into a distribution over spatial positions (softmax of z/T over the voxels
of the patch); loss = T² · Σ_{b,c} KL(teacher ‖ student) / (B·C). Voxels under nnU-Net's ignore label are left
out of both distributions. On logits no adapter is needed; the same form serves label and region datasets.
Defaults T = 4, weight 3: CIRKD's ``CriterionCWD`` settings for logits.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps

MASKED_LOGIT = -1e9  # finite, so masked voxels get probability 0 and zero (not NaN) gradients


@dataclass(frozen=True)
class CWDConfig:
    weight: float = 3.0
    temperature: float = 4.0


def cwd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``T² · Σ_{b,c} Σ_i q_{bci} log(q_{bci} / p_{bci}) / (B·C)``, softmax over spatial positions i."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"CWD needs equal shapes, got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    b, c = student_logits.shape[:2]
    zs = student_logits.float().reshape(b, c, -1) / temperature
    zt = teacher_logits.float().reshape(b, c, -1) / temperature
    if valid is not None:
        keep = valid.reshape(b, 1, -1)
        zs, zt = zs.masked_fill(~keep, MASKED_LOGIT), zt.masked_fill(~keep, MASKED_LOGIT)
    q = torch.softmax(zt, dim=2)
    kl = torch.xlogy(q, q) - q * F.log_softmax(zs, dim=2)
    return kl.sum() / (b * c) * temperature**2


class ChannelWiseDistillation(DistillationMethod):
    name = "cwd"
    term_names = ("cwd",)

    def __init__(self, config: CWDConfig = CWDConfig()):
        self.config = config

    def student_taps(self, n_stages: int) -> Taps:
        return Taps()

    def teacher_taps(self, n_stages: int) -> Taps:
        return Taps()

    def loss(self, student: Captured, teacher: Captured, adapters, valid, regions: bool) -> dict[str, torch.Tensor]:
        final = max(teacher.logits)
        value = cwd_loss(student.logits[final], teacher.logits[final], self.config.temperature, valid.get(final))
        return {"cwd": value, "total": self.config.weight * value}
