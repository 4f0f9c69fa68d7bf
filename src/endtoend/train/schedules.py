"""Learning-rate schedules as pure functions of the step.

The loop sets `group["lr"] = peak_lr * lr_factor(schedule, step, total_steps)` before each
optimizer step (as nanoGPT's `get_lr(it)` does). A schedule that is a function of the step
alone needs no state in the checkpoint beyond the step itself, so resume is exact.
"""

from __future__ import annotations

import math

from endtoend.errors import UsageError

SCHEDULES = ("one-cycle", "cosine", "constant")


def lr_factor(schedule: str, step: int, total_steps: int, warmup: float = 0.1) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total_steps`.

    - ``one-cycle`` (Smith & Topin 2019, as torch's OneCycleLR with its defaults): linear
      rise from 1/25 to 1 over the first 30%, then cosine down to 1/(25*1e4).
    - ``cosine``: linear warmup over `warmup` (fraction of the run), then cosine to 0.
    - ``constant``: linear warmup over `warmup`, then constant.
    """
    if schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    total_steps = max(total_steps, 1)
    progress = min(step / total_steps, 1.0)
    if schedule == "one-cycle":
        start, end, peak_at = 1 / 25, 1 / 25 / 1e4, 0.3
        if progress < peak_at:
            return start + (1 - start) * progress / peak_at
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (progress - peak_at) / (1 - peak_at)))
    if progress < warmup:
        return (step + 1) / max(warmup * total_steps, 1)
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / max(1 - warmup, 1e-12)))
