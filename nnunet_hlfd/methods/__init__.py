"""Distillation methods: each is a declaration of taps, adapters and a pure loss (one file per method)."""

from nnunet_hlfd.methods.base import Captured, DistillationMethod, Distiller
from nnunet_hlfd.methods.hlfd import HLFD, HLFDConfig, HLFDStageMapping, hlfd_loss, hlfd_stage_mapping

__all__ = [
    "HLFD",
    "Captured",
    "DistillationMethod",
    "Distiller",
    "HLFDConfig",
    "HLFDStageMapping",
    "hlfd_loss",
    "hlfd_stage_mapping",
]
