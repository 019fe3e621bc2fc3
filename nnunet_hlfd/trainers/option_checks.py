"""Option values from the plans block, checked before nnU-Net writes anything: type, range, and the message
names the plans-block key, the value given and what is valid.

A JSON plans block can hold anything (``"width": "half"``, ``null``, ``"alpha": -1``); a value of the wrong type
would otherwise fail deep inside training (or, worse, train: a negative loss weight rewards the student for
moving away from the teacher)."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from nnunet_hlfd.errors import OptionError
from nnunet_hlfd.inheritance import IMPORTANCES
from nnunet_hlfd.runtime import PLANS_BLOCK, SCHEDULE_KEY

# hyper-parameters by name: loss weights may be 0 (the term is off), scales must be positive
NON_NEGATIVE = ("alpha", "beta", "weight")
POSITIVE = ("temperature", "exponent", "anchors_per_class", "pool_scale")
INITS = ("random", "teacher")  # a student's start: random weights, or selected from its teacher's


def refuse(name: str, value: Any, valid: str) -> OptionError:
    return OptionError(f'plans block "{PLANS_BLOCK}": "{name}": {value!r} is not valid: {valid}.')


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is an int to Python


def check_value(name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (JSON lists become tuples), or an OptionError."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise refuse(name, value, "true or false")
        return value
    if isinstance(default, int):
        if not _is_whole(value):
            raise refuse(name, value, "a whole number")
    elif isinstance(default, float):
        if not _is_number(value):
            raise refuse(name, value, "a finite number")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise refuse(name, value, "a string")
    elif isinstance(default, tuple):
        kind = type(default[0]) if default else object
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value
        ):
            raise refuse(name, value, f"a list like {list(default)}")
        value = tuple(value)
    if name in POSITIVE and not value > 0:
        raise refuse(name, value, "a number > 0")
    if (name in NON_NEGATIVE or name.endswith("_weight")) and not value >= 0:
        raise refuse(name, value, "a loss weight ≥ 0 (0 turns the term off)")
    return value


def build_config(config: Any, options: dict) -> Any:
    """The method's config (a frozen dataclass like ``config``) from the options, each value checked; the
    config's own checks (choices, ranges between fields) are reported the same way."""
    values = {f.name: check_value(f.name, options[f.name], getattr(config, f.name)) for f in fields(config)}
    try:
        return type(config)(**values)
    except (ValueError, TypeError) as e:
        raise OptionError(f'plans block "{PLANS_BLOCK}": {e}. Change the option or remove it (default).') from None


def check_student_options(options: dict) -> None:
    """The student's own options (width, depth, teacher location, training fraction)."""
    width = options["width"]
    if not _is_number(width) or not 0 < width <= 1:
        raise refuse("width", width, "a number in (0, 1], the student's share of the teacher's features per stage")
    depth = options["n_conv_per_stage"]
    depths = depth if isinstance(depth, list) else [depth]
    if depth is not None and not all(_is_whole(d) and d >= 1 for d in depths):
        raise refuse("n_conv_per_stage", depth, "null (as the teacher), a whole number ≥ 1, or one per stage")
    for name in ("teacher", "teacher_plans", "teacher_configuration"):
        if options[name] is not None and not (isinstance(options[name], str) and options[name]):
            raise refuse(name, options[name], "null (the default) or a non-empty string")
    for name in ("teacher_trainer", "teacher_checkpoint"):
        if not (isinstance(options[name], str) and options[name]):
            raise refuse(name, options[name], "a non-empty string")
    if not _is_whole(options["fraction_seed"]):
        raise refuse("fraction_seed", options["fraction_seed"], "a whole number")
    if options["init"] not in INITS:
        raise refuse("init", options["init"], 'one of "random" (the default) or "teacher" (weight inheritance)')
    if options["init_importance"] not in IMPORTANCES:
        raise refuse("init_importance", options["init_importance"], f"one of {list(IMPORTANCES)}")


SCHEDULE_FIELDS = {"epochs": 1, "iterations": 1, "val_iterations": 1}  # whole numbers, at least this


def check_schedule(schedule: Any, configuration: str) -> None:
    """A planned schedule block (:mod:`nnunet_hlfd.trainers.planned_schedule`): whole epochs and iterations,
    true/false mirroring, a whole seed or null."""
    where = f'plans configuration {configuration}: schedule "{SCHEDULE_KEY}"'
    if not isinstance(schedule, dict):
        raise OptionError(f'{where} is {schedule!r}, not a block like {{"epochs": 50, "iterations": 25, ...}}.')
    known = {*SCHEDULE_FIELDS, "mirroring", "test_time_mirroring", "seed"}
    unknown, missing = sorted(set(schedule) - known), sorted({*SCHEDULE_FIELDS, "mirroring"} - set(schedule))
    if unknown or missing:
        raise OptionError(f"{where}: unknown keys {unknown}, missing keys {missing}. Valid keys: {sorted(known)}.")
    for name, least in SCHEDULE_FIELDS.items():
        if not _is_whole(schedule[name]) or schedule[name] < least:
            raise OptionError(f'{where}: "{name}": {schedule[name]!r} is not a whole number ≥ {least}.')
    for name in ("mirroring", "test_time_mirroring"):
        if schedule.get(name) is not None and not isinstance(schedule[name], bool):
            raise OptionError(f'{where}: "{name}": {schedule[name]!r} is not true or false.')
    if schedule.get("seed") is not None and not _is_whole(schedule["seed"]):
        raise OptionError(f'{where}: "seed": {schedule["seed"]!r} is not a whole number (or null).')
