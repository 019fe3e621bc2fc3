"""Channel-wise distillation (Shu et al., ICCV 2021) on the final prediction.

Each channel's logits are turned into a distribution over spatial positions (softmax of z/T over the voxels
of the patch); loss = T² · Σ_{b,c} KL(teacher ‖ student) / (B·C). Voxels under nnU-Net's ignore label are left
out of both distributions. On logits no adapter is needed; the same form serves label and region datasets.
Defaults T = 4, weight 3: CIRKD's ``CriterionCWD`` settings for logits.
"""

from dataclasses import dataclass

import torch

from nnunet_hlfd.losses.channel_wise import cwd_loss
from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps


@dataclass(frozen=True)
class CWDConfig:
    weight: float = 3.0
    temperature: float = 4.0


class ChannelWiseDistillation(DistillationMethod):
    name = "cwd"
    term_names = ("cwd",)

    def __init__(self, config: CWDConfig = CWDConfig()):
        self.config = config

    def student_taps(self, n_stages: int) -> Taps:
        return Taps()

    def teacher_taps(self, n_stages: int) -> Taps:
        return Taps()

    def loss(
        self, student: Captured, teacher: Captured, adapters, valid, regions: bool, targets=None
    ) -> dict[str, torch.Tensor]:
        final = teacher.final
        value = cwd_loss(student.logits[final], teacher.logits[final], self.config.temperature, valid.get(final))
        return {"cwd": value, "total": self.config.weight * value}
