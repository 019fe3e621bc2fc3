"""Pure distillation loss functions: tensors in, scalar tensors out, no state."""

from nnunet_hlfd.losses.attention import attention_map, attention_transfer, combined_attention_map
from nnunet_hlfd.losses.resize import resize
from nnunet_hlfd.losses.soft_kl import soft_kl, soft_probabilities

__all__ = [
    "attention_map",
    "attention_transfer",
    "combined_attention_map",
    "resize",
    "soft_kl",
    "soft_probabilities",
]
