"""1×1 convolutions from student decoder-stage features to class logits."""

from collections.abc import Mapping

import torch
from torch import nn


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class ClassHeads(nn.Module):
    """One learned 1×1 conv per tapped student decoder stage, mapping its features to class logits.

    An alternative to reusing the student's deep-supervision heads: the distillation target then no longer
    shares parameters with the segmentation loss. These modules live on the student side only; a trainable
    projection of the teacher's target would let the loss collapse.
    """

    def __init__(self, in_channels: Mapping[int, int], num_classes: int, conv_op: type[nn.Module]):
        super().__init__()
        self.heads = nn.ModuleDict(
            {
                str(stage): conv_op(channels, num_classes, kernel_size=1, bias=True)
                for stage, channels in in_channels.items()
            }
        )

    def forward(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        # every head is used once per call, which is what DistributedDataParallel expects
        return {int(stage): head(features[int(stage)]) for stage, head in self.heads.items()}
