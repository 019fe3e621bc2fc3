"""A recorder keeps the outputs of chosen modules during a forward pass, and nothing else."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn


class FeatureRecorder:
    """Forward hooks that store the outputs of named modules, but only inside :meth:`recording`.

    The hooks stay registered for the lifetime of the network (hooks added or removed after
    ``torch.compile`` are not seen by the compiled graph), and are inert outside :meth:`recording`, so
    validation and sliding-window inference store nothing. Stored tensors are the modules' own outputs:
    hook stage boundaries only, since nnU-Net's blocks end in in-place LeakyReLUs.
    """

    def __init__(self, modules: Mapping[str, nn.Module]):
        self.outputs: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]
        self.names = tuple(modules)

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if self._active:
                self.outputs[name] = output

        return hook

    @contextmanager
    def recording(self) -> Iterator[dict[str, torch.Tensor]]:
        """Record during the block; the outputs stay available until :meth:`clear` or the next recording."""
        self.outputs.clear()
        self._active = True
        try:
            yield self.outputs
        finally:
            self._active = False
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RuntimeError(
                f"feature capture failed: no output recorded for {missing}. Hooks registered after "
                "torch.compile are skipped; run with nnUNet_compile=f if you enabled compilation."
            )

    def clear(self) -> None:
        """Drop the stored tensors (and with them the autograd graph they hold)."""
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs.clear()
