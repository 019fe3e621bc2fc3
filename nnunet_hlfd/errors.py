"""Errors raised before training starts, each saying what is wrong and how to fix it."""


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
