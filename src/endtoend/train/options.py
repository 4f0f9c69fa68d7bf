"""`fit`'s advanced settings, grouped: each group a small frozen dataclass that checks itself.

The everyday arguments of `fit` stay flat (`fit(model, data, epochs=20, lr=1e-3)`); the
settings that only matter once a user reaches for them come as one object each:

    fit(..., clip=1.0)                                   # clip the gradient norm at 1.0
    fit(..., clip=Clipping(value=0.5, agc=0.01))
    fit(..., guard=Guard(rollback_lr_factor=0.25))       # guard=False turns the guard off
    fit(..., curriculum=Curriculum(difficulty, epochs=5))  # or curriculum=difficulty
    fit(..., progressive=Progressive(resolution={0: 16, 3: 28}, unfreeze={0: ["head"], 2: [""]}))

config.json records each group with `describe()`.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from endtoend.errors import UsageError


def is_integer(value: Any) -> bool:
    """An int or a numpy integer, never a bool (True is not a batch size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number, NumPy's included, never a bool (inf is no learning rate)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(name: str, value: Any, *, integer: bool = False, optional: bool = False, hint: str = "") -> None:
    """One line naming `name`, what it got and what it expects."""
    if value is None and optional:
        return
    ok = (is_integer(value) if integer else is_number(value)) and value > 0
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise UsageError(f"{name} must be {kind}{' or None' if optional else ''}, got {value!r}{hint}")


@dataclass(frozen=True)
class Clipping:
    """Gradient clipping, applied in this order: AGC (per unit, relative to the weight's
    norm), then by value, then by global norm. See endtoend.clip_gradients."""

    norm: float | None = None
    value: float | None = None
    agc: float | None = None

    def __post_init__(self):
        check_positive("Clipping.norm (clip)", self.norm, optional=True, hint="; try clip=1.0")
        check_positive("Clipping.value", self.value, optional=True)
        check_positive("Clipping.agc", self.agc, optional=True, hint="; NFNets use 0.01")

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.norm, self.value, self.agc))

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Guard:
    """The non-finite guard: skip a step whose loss or gradients hold NaN/Inf; after
    `bad_steps_before_rollback` in a row, return to the last good checkpoint with the
    learning rate times `rollback_lr_factor`; give up after `max_rollbacks`."""

    bad_steps_before_rollback: int = 3
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3

    def __post_init__(self):
        check_positive("Guard.bad_steps_before_rollback", self.bad_steps_before_rollback, integer=True)
        if not (is_number(self.rollback_lr_factor) and 0 < self.rollback_lr_factor <= 1):
            raise UsageError(f"Guard.rollback_lr_factor must be in (0, 1] (it lowers the learning rate), "
                             f"got {self.rollback_lr_factor!r}; try 0.5")
        if not (is_integer(self.max_rollbacks) and self.max_rollbacks >= 0):
            raise UsageError(f"Guard.max_rollbacks must be an integer >= 0, got {self.max_rollbacks!r}")

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Curriculum:
    """Easiest rows first: `difficulty` holds one score per training row (lower = easier);
    the pool grows to the whole set over `epochs` epochs (default: half the run)."""

    difficulty: torch.Tensor = field(repr=False)
    epochs: int | None = None

    def __post_init__(self):
        if not isinstance(self.difficulty, torch.Tensor):
            try:
                object.__setattr__(self, "difficulty", torch.as_tensor(self.difficulty))
            except (TypeError, ValueError, RuntimeError):
                raise UsageError(f"Curriculum.difficulty must be one score per training row (a tensor), "
                                 f"got {type(self.difficulty).__name__}") from None
        if self.epochs is not None and not (is_integer(self.epochs) and self.epochs >= 0):
            raise UsageError(f"Curriculum.epochs must be an integer >= 0 or None, got {self.epochs!r}")

    def describe(self, difficulty: torch.Tensor | None = None) -> dict[str, Any]:
        scores = self.difficulty if difficulty is None else difficulty
        content = hashlib.sha256(scores.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()).hexdigest()
        return {"rows": int(scores.numel()), "epochs": self.epochs, "difficulty_sha256": content[:16]}


@dataclass(frozen=True)
class Progressive:
    """Progressive training: `resolution` {epoch: image size} resizes square image batches
    from that epoch on; `unfreeze` {epoch: [parameter name prefixes]} makes those parameters
    trainable from that epoch on ("" = everything), every other one frozen."""

    resolution: dict[int, int] | None = None
    unfreeze: dict[int, list[str]] | None = None

    def __post_init__(self):
        for name, schedule in (("resolution", self.resolution), ("unfreeze", self.unfreeze)):
            if schedule is None:
                continue
            if not isinstance(schedule, dict) or not schedule:
                raise UsageError(f"Progressive.{name} must be a non-empty {{epoch: value}} dict, got {schedule!r}")
            for epoch, value in schedule.items():
                if not (is_integer(epoch) and epoch >= 0):
                    raise UsageError(f"Progressive.{name} keys are epochs (integers >= 0), got {epoch!r}")
                if name == "resolution" and not (is_integer(value) and value > 0):
                    raise UsageError(f"Progressive.resolution values are image sizes (positive integers), got {value!r}")
                if name == "unfreeze" and not (isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value)):
                    raise UsageError(f"Progressive.unfreeze values are lists of parameter name prefixes, got {value!r}")

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def as_clipping(clip: Any) -> Clipping:
    if clip is None:
        return Clipping()
    if isinstance(clip, Clipping):
        return clip
    if is_number(clip):
        return Clipping(norm=clip)
    raise UsageError(f"clip must be a max gradient norm (a number), a Clipping(...) or None, got {clip!r}")


def as_guard(guard: Any) -> Guard | None:
    if guard is True:
        return Guard()
    if guard is False or guard is None:
        return None
    if isinstance(guard, Guard):
        return guard
    raise UsageError(f"guard must be True, False or a Guard(...), got {guard!r}")


def as_curriculum(curriculum: Any) -> Curriculum | None:
    if curriculum is None or isinstance(curriculum, Curriculum):
        return curriculum
    return Curriculum(curriculum)


def as_progressive(progressive: Any) -> Progressive:
    if progressive is None:
        return Progressive()
    if isinstance(progressive, Progressive):
        return progressive
    raise UsageError(f"progressive must be a Progressive(resolution=..., unfreeze=...) or None, got {progressive!r}")


# Arguments that earlier versions of fit took flat, and where they live now.
MOVED = {
    "clip_norm": "clip=<max norm> or clip=Clipping(norm=...)",
    "clip_value": "clip=Clipping(value=...)",
    "agc": "clip=Clipping(agc=...)",
    "bad_steps_before_rollback": "guard=Guard(bad_steps_before_rollback=...)",
    "rollback_lr_factor": "guard=Guard(rollback_lr_factor=...)",
    "max_rollbacks": "guard=Guard(max_rollbacks=...)",
    "curriculum_epochs": "curriculum=Curriculum(difficulty, epochs=...)",
    "resolution_schedule": "progressive=Progressive(resolution={epoch: size})",
    "unfreeze_schedule": "progressive=Progressive(unfreeze={epoch: [prefixes]})",
}


def reject_unknown_arguments(unknown: dict[str, Any], known: list[str]) -> None:
    """fit(**unknown): one line naming the argument, and where it went or what was meant."""
    for name in unknown:
        if name in MOVED:
            raise UsageError(f"fit() no longer takes {name}=: pass {MOVED[name]} (see docs/stability.md)")
        close = difflib.get_close_matches(name, known, n=1)
        raise UsageError(f"fit() got an unknown argument {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
