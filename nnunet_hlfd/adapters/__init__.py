"""Trainable student-side connectors (adapters). Every one is persistent, optimised and checkpointed."""

from nnunet_hlfd.adapters.connectors import ChannelAdapters, ClassHeads, count_parameters

__all__ = ["ChannelAdapters", "ClassHeads", "count_parameters"]
