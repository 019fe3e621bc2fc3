"""FitNets hints (Romero et al., ICLR 2015): a learned student-side 1×1 conv maps the student's features of an
encoder stage to the teacher's channels; loss = mean squared error against the teacher's features.

Default hint: the bottleneck (encoder stage -1, the middle of a U-Net, as FitNets' middle-layer hint).
Weight 10 and a bias-free 1×1 conv as CIRKD's ``CriterionFitNet``. The adapters are trained, checkpointed,
clipped with the student and counted in the training log.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_hlfd.adapters import ChannelAdapters
from nnunet_hlfd.capture import StageLayoutError, UNetLayout
from nnunet_hlfd.methods.base import Captured, DistillationMethod, Taps


@dataclass(frozen=True)
class FitNetsConfig:
    weight: float = 10.0
    hint_stages: tuple[int, ...] = (-1,)  # encoder stages; negative counts from the bottleneck


def fitnets_loss(adapted_student: Mapping[int, torch.Tensor], teacher: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Mean over stages of the element-wise mean squared error, in float32."""
    return torch.stack([F.mse_loss(adapted_student[i].float(), teacher[i].float()) for i in teacher]).mean()


class FitNets(DistillationMethod):
    name = "fitnets"
    term_names = ("hint",)

    def __init__(self, config: FitNetsConfig = FitNetsConfig()):
        self.config = config

    def stages(self, n_stages: int) -> tuple[int, ...]:
        stages = sorted({i % n_stages for i in self.config.hint_stages})
        if any(not -n_stages <= i < n_stages for i in self.config.hint_stages):
            raise StageLayoutError(f"hint_stages {self.config.hint_stages} outside the {n_stages} encoder stages")
        return tuple(stages)

    def student_taps(self, n_stages: int) -> Taps:
        return Taps(encoder=self.stages(n_stages))

    def teacher_taps(self, n_stages: int) -> Taps:
        return Taps(encoder=self.stages(n_stages))

    def build_adapters(self, student: UNetLayout, teacher: UNetLayout, num_classes: int) -> nn.Module:
        stages = self.stages(student.n_stages)
        return ChannelAdapters(
            {i: student.encoder_channels[i] for i in stages},
            {i: teacher.encoder_channels[i] for i in stages},
            student.conv_op,
        )

    def loss(
        self, student: Captured, teacher: Captured, adapters, valid, regions: bool, targets=None
    ) -> dict[str, torch.Tensor]:
        hint = fitnets_loss(adapters(student.encoder), teacher.encoder)
        return {"hint": hint, "total": self.config.weight * hint}
