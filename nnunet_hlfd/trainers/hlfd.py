"""HLFD trainers: ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerHLFD``."""

from dataclasses import asdict

from nnunet_hlfd.methods import HLFD, HLFDConfig
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation


class nnUNetTrainerHLFD(nnUNetTrainerDistillation):
    """HLFD with a half-width student (defaults from the authors' code)."""

    hlfd: HLFDConfig = HLFDConfig()

    def option_defaults(self) -> dict:
        return {**super().option_defaults(), **asdict(self.hlfd)}

    def build_method(self, options: dict) -> HLFD:
        return HLFD(HLFDConfig(**{name: options[name] for name in HLFDConfig.option_names()}))


class nnUNetTrainerHLFD_w025(nnUNetTrainerHLFD):
    """HLFD with a quarter-width student."""

    width = 0.25


class nnUNetTrainerHLFD_adapters(nnUNetTrainerHLFD):
    """HLFD whose pixel-level student predictions come from learned 1×1 adapters instead of the DS heads."""

    hlfd = HLFDConfig(plfd_heads="adapters")
