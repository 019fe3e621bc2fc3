"""The ``nnunet_hlfd`` command: :func:`main` dispatches to one module per concern (:mod:`.conversion`,
:mod:`.evaluation`, :mod:`.deploy`, :mod:`.benchmark`). Every refusal is an
:class:`nnunet_hlfd.errors.HLFDError`: its message, exit code 2."""

from nnunet_hlfd.cli.main import main

__all__ = ["main"]
