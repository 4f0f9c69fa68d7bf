"""The one trick behind every straight-through estimator in this package."""

from __future__ import annotations

import torch


def straight_through(hard: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """`hard` in the forward pass, the gradient of `surrogate` in the backward pass.

    `surrogate - surrogate.detach()` is exactly zero for finite values, so the result equals
    `hard` bit for bit (unlike the common `soft + (hard - soft).detach()`, which can be off
    by one ulp), while autograd sees only `surrogate`.
    """
    return hard.detach() + (surrogate - surrogate.detach())
