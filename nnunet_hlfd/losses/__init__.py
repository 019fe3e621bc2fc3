"""Pure distillation loss functions: tensors in, scalar tensors out, no state."""

from nnunet_hlfd.losses.attention import attention_map, attention_transfer, combined_attention_map
from nnunet_hlfd.losses.channel_wise import channel_wise_kl, cwd_loss, spatial_probabilities
from nnunet_hlfd.losses.reference_classes import voxel_classes
from nnunet_hlfd.losses.resize import resize
from nnunet_hlfd.losses.soft_kl import class_balanced_soft_kl, per_voxel_kl, soft_kl, soft_probabilities

__all__ = [
    "attention_map",
    "attention_transfer",
    "channel_wise_kl",
    "class_balanced_soft_kl",
    "combined_attention_map",
    "cwd_loss",
    "per_voxel_kl",
    "resize",
    "soft_kl",
    "soft_probabilities",
    "spatial_probabilities",
    "voxel_classes",
]
