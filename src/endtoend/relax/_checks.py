"""Argument checks shared by the relaxations: a bad value fails at once, in one line.

A non-positive temperature or strength does not crash: it returns NaN, a reversed order
or a constant, and training goes on. Each check raises `UsageError` naming the function,
the argument, what it expects and the value it got. A tensor argument passes unchecked,
since reading it would synchronise with its device on every call.
"""

from __future__ import annotations

import math
import numbers

import torch

from endtoend.errors import UsageError


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive(function: str, name: str, value: object, hint: str = "") -> None:
    """`value` must be a finite number > 0."""
    if isinstance(value, torch.Tensor):
        return
    if not (_is_number(value) and 0 < value < math.inf):
        raise UsageError(f"{function}: {name} must be a finite number > 0, got {value!r}{hint}")


def non_negative(function: str, name: str, value: object, hint: str = "") -> None:
    """`value` must be a finite number >= 0."""
    if isinstance(value, torch.Tensor):
        return
    if not (_is_number(value) and 0 <= value < math.inf):
        raise UsageError(f"{function}: {name} must be a finite number >= 0, got {value!r}{hint}")


def between(function: str, name: str, value: object, low: float, high: float, hint: str = "") -> None:
    """`value` must be a number in [low, high]."""
    if isinstance(value, torch.Tensor):
        return
    if not (_is_number(value) and low <= value <= high):
        raise UsageError(f"{function}: {name} must be a number in [{low}, {high}]{hint}, got {value!r}")


def integer(function: str, name: str, value: object, low: int, high: int | None = None, hint: str = "") -> None:
    """`value` must be an int in [low, high] (no upper bound when high is None)."""
    expected = f">= {low}" if high is None else f"in [{low}, {high}]"
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and low <= value and (high is None or value <= high)):
        raise UsageError(f"{function}: {name} must be an integer {expected}, got {value!r}{hint}")


def tensors(function: str, **values: object) -> None:
    """Each value must be a torch.Tensor (a list or a NumPy array fails later, unclearly)."""
    for name, value in values.items():
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"{function}: {name} must be a torch.Tensor, got {type(value).__name__}; "
                             f"wrap it with torch.as_tensor({name})")
