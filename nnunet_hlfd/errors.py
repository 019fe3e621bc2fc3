"""Every refusal of this package, under one base class: each says what is wrong and how to fix it, and is raised
before anything is written. The command line turns them into a message and exit code 2 (:func:`exit_with_message`).
"""

import sys
from collections.abc import Iterator
from contextlib import contextmanager

REFUSED_EXIT_CODE = 2  # the exit code of a command that refused its input


class HLFDError(RuntimeError):
    """Base class: a command or a training cannot run as asked. Raised before anything is written."""


@contextmanager
def exit_with_message(command: str, *errors: type[Exception]) -> Iterator[None]:
    """For the command line: these errors (default: every :class:`HLFDError`) end the command with their message and
    exit code 2 (REFUSED_EXIT_CODE), no traceback."""
    caught = errors or (HLFDError,)
    try:
        yield
    except caught as e:
        print(f"{command}: {e}", file=sys.stderr)
        raise SystemExit(REFUSED_EXIT_CODE) from None


class DistillationSetupError(HLFDError):
    """A distillation run cannot start as configured."""


class TeacherNotFoundError(DistillationSetupError):
    pass


class TeacherMismatchError(DistillationSetupError):
    pass


class OptionError(DistillationSetupError):
    pass


class EvaluationError(HLFDError):
    """An evaluation, comparison, efficiency or figure command cannot run on the given folders."""


class ConversionError(HLFDError):
    """A challenge dataset cannot be converted as asked."""


class CaseError(HLFDError):
    """One case of a conversion is bad. Its args stay (case_id, problem, fix) so it survives pickling from a
    worker."""

    def __init__(self, case_id: str, problem: str, fix: str) -> None:
        super().__init__(case_id, problem, fix)
        self.case_id = case_id

    def __str__(self) -> str:
        case_id, problem, fix = self.args
        return f"{case_id}: {problem}\n    fix: {fix}"


class PhantomError(HLFDError, ValueError):
    """The label maps cannot be turned into phantoms."""


class StageLayoutError(HLFDError, ValueError):
    """The network (or a pair of networks) does not have the stage layout distillation relies on."""


class BenchmarkError(HLFDError):
    """The benchmark cannot run (or continue) as asked."""


class DeployError(HLFDError):
    """A model cannot be exported, or a deploy bundle cannot predict, as asked."""


class OutputFolderError(HLFDError):
    """A command's output folder is not one (an existing file)."""


class MissingCommandError(HLFDError):
    """One of nnU-Net's commands is not installed where this Python can find it."""
