"""Trainable student-side connectors (adapters). Every one is persistent, optimised and checkpointed."""

from nnunet_hlfd.adapters.class_heads import ClassHeads, count_parameters

__all__ = ["ClassHeads", "count_parameters"]
