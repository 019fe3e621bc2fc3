"""The KD baselines and HLFD's ablations as nnU-Net trainers: each declares its method and configuration.

Every one trains the same half-width student plan as ``nnUNetTrainerHLFD`` with the same teacher lookup,
checks, checkpointing, logging and DDP handling (``nnUNetTrainerDistillation``); options are overridable per
dataset in the plans ``"hlfd"`` block like HLFD's.
"""

from nnunet_hlfd.methods.attention_transfer import AttentionTransfer, AttentionTransferConfig
from nnunet_hlfd.methods.cwd import ChannelWiseDistillation, CWDConfig
from nnunet_hlfd.methods.fitnets import FitNets, FitNetsConfig
from nnunet_hlfd.methods.hlfd_ablations import (
    AblationConfig,
    ConcatenatedFeedback,
    ConcatenatedFeedbackConfig,
    HLFDAblation,
)
from nnunet_hlfd.methods.logit_kd import LogitKD, LogitKDConfig
from nnunet_hlfd.methods.structured_kd import StructuredKD, StructuredKDConfig
from nnunet_hlfd.trainers.distillation import nnUNetTrainerDistillation


class nnUNetTrainerLogitKD(nnUNetTrainerDistillation):
    """Hinton's KD per voxel on the final prediction."""

    method_class = LogitKD
    config = LogitKDConfig()


class nnUNetTrainerLogitKD_ds(nnUNetTrainerLogitKD):
    """Logit KD on every deep-supervision output, with nnU-Net's deep-supervision weights."""

    config = LogitKDConfig(deep_supervision=True)


class nnUNetTrainerAT(nnUNetTrainerDistillation):
    """Attention transfer, p = 2 (the original)."""

    method_class = AttentionTransfer
    config = AttentionTransferConfig()


class nnUNetTrainerAT_init(nnUNetTrainerAT):
    """Attention transfer on a student that starts from its teacher's weights."""

    init = "teacher"


class nnUNetTrainerAT_p4(nnUNetTrainerAT):
    """Attention transfer, p = 4 (the medical KD codes)."""

    config = AttentionTransferConfig(exponent=4.0)


class nnUNetTrainerFitNets(nnUNetTrainerDistillation):
    """FitNets hint at the bottleneck through a learned 1×1 adapter."""

    method_class = FitNets
    config = FitNetsConfig()


class nnUNetTrainerCWD(nnUNetTrainerDistillation):
    """Channel-wise distillation on the final prediction."""

    method_class = ChannelWiseDistillation
    config = CWDConfig()


class nnUNetTrainerCWD_init(nnUNetTrainerCWD):
    """Channel-wise distillation on a student that starts from its teacher's weights."""

    init = "teacher"


class nnUNetTrainerStructuredKD(nnUNetTrainerDistillation):
    """Structured KD: pair-wise affinity of the last decoder features + pixel-wise KD."""

    method_class = StructuredKD
    config = StructuredKDConfig()


class nnUNetTrainerHLFD_attention_only(nnUNetTrainerDistillation):
    """Ablation ``attn_kd``: attention transfer at the bottleneck only."""

    method_class = HLFDAblation
    config = AblationConfig(variant="attention_only", alpha=0.0, beta=1.0)


class nnUNetTrainerHLFD_without_feedback(nnUNetTrainerHLFD_attention_only):
    """Ablation ``wo_feedback``: logit KD + bottleneck AT, no feedback across layers."""

    config = AblationConfig(variant="without_feedback")


class nnUNetTrainerHLFD_layerwise(nnUNetTrainerHLFD_attention_only):
    """Ablation ``deep_kd``: every stage to the same stage."""

    config = AblationConfig(variant="layerwise")


class nnUNetTrainerHLFD_individual_feedback(nnUNetTrainerHLFD_attention_only):
    """Ablation ``indv_feedback``: the teacher's final layers to each student stage, nothing unified."""

    config = AblationConfig(variant="individual_feedback")


class nnUNetTrainerHLFD_concatenated_feedback(nnUNetTrainerDistillation):
    """Ablation ``cat_feedback_ours``: the student's stages concatenated against the teacher's final layers."""

    method_class = ConcatenatedFeedback
    config = ConcatenatedFeedbackConfig()
