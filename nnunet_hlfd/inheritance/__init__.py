"""Weight inheritance: a slim student whose weights are selected from its trained teacher's (weight selection, Xu
et al., ICLR 2024; the channel grouping of DepGraph, Fang et al., CVPR 2023), written against nnU-Net's own U-Nets."""

from nnunet_hlfd.inheritance.weight_selection import IMPORTANCES, InheritanceError, inherit_weights

__all__ = ["IMPORTANCES", "InheritanceError", "inherit_weights"]
