"""Student-side connectors: one learned 1×1 convolution per tapped stage."""

from collections.abc import Mapping

import torch
from torch import nn


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


class ChannelAdapters(nn.Module):
    """One 1×1 conv per stage, from the student's channels of that stage to ``out_channels[stage]``.

    These modules live on the student side only: a trainable projection of the teacher's target would let
    the loss collapse.
    """

    def __init__(
        self,
        in_channels: Mapping[int, int],
        out_channels: Mapping[int, int],
        conv_op: type[nn.Module],
        bias: bool = False,
    ):
        super().__init__()
        self.heads = nn.ModuleDict(
            {
                str(stage): conv_op(channels, out_channels[stage], kernel_size=1, bias=bias)
                for stage, channels in in_channels.items()
            }
        )

    def forward(self, features: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        # every head is used once per call, which is what DistributedDataParallel expects
        return {int(stage): head(features[int(stage)]) for stage, head in self.heads.items()}


class ClassHeads(ChannelAdapters):
    """Student decoder-stage features -> class logits (with bias): an alternative to reusing the student's
    deep-supervision heads, so that the distillation target no longer shares parameters with the
    segmentation loss."""

    def __init__(self, in_channels: Mapping[int, int], num_classes: int, conv_op: type[nn.Module]):
        super().__init__(in_channels, dict.fromkeys(in_channels, num_classes), conv_op, bias=True)
