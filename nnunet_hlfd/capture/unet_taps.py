"""Where the stages of nnU-Net's U-Nets (PlainConvUNet, ResidualEncoderUNet) are, and what they output.

Encoder stage i = ``encoder.stages[i]`` (i = n-1 is the bottleneck); decoder stage j =
``decoder.stages[j]`` with j = 0 the lowest resolution; decoder stage j is supervised by
``decoder.seg_layers[j]``, whose logits are deep-supervision output k = n-2-j.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from nnunet_hlfd.capture.recorder import FeatureRecorder
from nnunet_hlfd.errors import StageLayoutError


@dataclass(frozen=True)
class UNetLayout:
    n_stages: int
    encoder_channels: tuple[int, ...]
    conv_op: type[nn.Module]

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        """Channels of decoder stage j = 0..n-2 (it mirrors encoder stage n-2-j)."""
        return tuple(self.encoder_channels[-(j + 2)] for j in range(self.n_stages - 1))

    @staticmethod
    def output_index(decoder_stage: int, n_stages: int) -> int:
        """Deep-supervision output index k of decoder stage j (nnU-Net lists the highest resolution first)."""
        return n_stages - 2 - decoder_stage


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel and torch.compile wrappers."""
    if hasattr(network, "module"):  # DistributedDataParallel
        network = network.module
    return getattr(network, "_orig_mod", network)  # torch.compile


def unet_layout(network: nn.Module) -> UNetLayout:
    """Read the stage layout of an nnU-Net U-Net, or explain why it is not one."""
    net = unwrap(network)
    encoder, decoder = getattr(net, "encoder", None), getattr(net, "decoder", None)
    if encoder is None or decoder is None or not hasattr(encoder, "stages") or not hasattr(decoder, "stages"):
        raise StageLayoutError(
            f"{type(net).__name__} has no encoder.stages/decoder.stages: distillation supports nnU-Net's "
            "U-Nets (PlainConvUNet, ResidualEncoderUNet)"
        )
    n = len(encoder.stages)
    if len(decoder.stages) != n - 1 or len(decoder.seg_layers) != n - 1:
        raise StageLayoutError(f"{type(net).__name__}: {n} encoder stages but {len(decoder.stages)} decoder stages")
    return UNetLayout(n_stages=n, encoder_channels=tuple(encoder.output_channels), conv_op=type(decoder.seg_layers[0]))


def unet_recorder(
    network: nn.Module, encoder_stages: Iterable[int] = (), decoder_stages: Iterable[int] = ()
) -> FeatureRecorder:
    """A recorder on the chosen stages only, named ``encoder.i`` / ``decoder.j``."""
    net = unwrap(network)
    modules = {f"encoder.{i}": net.encoder.stages[i] for i in encoder_stages}
    modules.update({f"decoder.{j}": net.decoder.stages[j] for j in decoder_stages})
    return FeatureRecorder(modules)
