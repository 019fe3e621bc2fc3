"""Errors raised before training starts, each saying what is wrong and how to fix it."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def exit_with_message(command: str, *errors: type[Exception]) -> Iterator[None]:
    """For the command line: these errors end the command with their message and exit code 2, no traceback."""
    try:
        yield
    except errors as e:
        print(f"{command}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class DistillationSetupError(RuntimeError):
    """A distillation run cannot start as configured. Raised before anything is written."""


class TeacherNotFoundError(DistillationSetupError):
    pass


class TeacherMismatchError(DistillationSetupError):
    pass


class OptionError(DistillationSetupError):
    pass


class EvaluationError(RuntimeError):
    """An evaluation, comparison, efficiency or figure command cannot run on the given folders. Raised before
    anything is written."""
