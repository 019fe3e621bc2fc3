"""Knowledge distillation (HLFD and friends) for nnU-Net v2."""

__version__ = "0.1.0"
