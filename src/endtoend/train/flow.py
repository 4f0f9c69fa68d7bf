"""The training flow: curriculum, progressive resolution and progressive unfreezing.

Each is a pure function of the epoch, so a resumed run sees exactly what an uninterrupted
one saw. `fit` calls them explicitly at the start of each epoch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from endtoend.errors import UsageError
from endtoend.train.data import TensorData


def curriculum_competence(epoch: int, ramp_epochs: int, start: float = 0.25) -> float:
    """Fraction of the training set (easiest first) available in `epoch`.

    The square-root competence of Platanios et al. 2019 ("Competence-based curriculum
    learning"): c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2)), with t the epoch and T the ramp.
    """
    if ramp_epochs <= 0:
        return 1.0
    return min(1.0, math.sqrt(epoch * (1 - start**2) / ramp_epochs + start**2))


def curriculum_pool(difficulty: torch.Tensor, epoch: int, ramp_epochs: int, start: float = 0.25) -> torch.Tensor:
    """Indices of the training rows available in `epoch`: the easiest `competence` fraction.

    `difficulty` holds one score per training row (lower = easier); ties keep row order.
    """
    order = torch.sort(difficulty, stable=True).indices
    keep = max(1, math.ceil(curriculum_competence(epoch, ramp_epochs, start) * len(order)))
    return order[:keep]


def check_curriculum(difficulty: torch.Tensor, n_train: int) -> torch.Tensor:
    difficulty = torch.as_tensor(difficulty)
    if difficulty.dim() != 1 or difficulty.shape[0] != n_train:
        raise UsageError(f"curriculum needs one difficulty score per training row ({n_train}), "
                         f"got shape {tuple(difficulty.shape)}")
    return difficulty.to(torch.float64)


def scheduled_value(schedule: dict[int, object] | None, epoch: int):
    """The value of an {epoch: value} schedule in force at `epoch` (None before its first key)."""
    if not schedule:
        return None
    started = [e for e in schedule if e <= epoch]
    return schedule[max(started)] if started else None


def resize_batch(inputs: torch.Tensor, size: int | None) -> torch.Tensor:
    """Progressive resizing: train early epochs on smaller images (Howard's progressive resizing)."""
    if size is None or inputs.dim() != 4 or inputs.shape[-1] == size:
        return inputs
    return F.interpolate(inputs, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def apply_unfreeze(model: nn.Module, schedule: dict[int, list[str]], epoch: int) -> list[str]:
    """Make trainable the parameters whose names start with a prefix listed at or before `epoch`.

    Every other parameter is frozen. "" unfreezes everything. Returns the trainable names.
    """
    prefixes = [p for e, names in schedule.items() if e <= epoch for p in names]
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name.startswith(p) for p in prefixes))
        if parameter.requires_grad:
            trainable.append(name)
    if not trainable:
        raise UsageError(f"Progressive(unfreeze=...) leaves no trainable parameter at epoch {epoch}; "
                         "list at least one module name prefix for epoch 0")
    return trainable


def check_unfreeze(model: nn.Module, schedule: dict[int, list[str]]) -> None:
    names = [n for n, _ in model.named_parameters()]
    for epoch, prefixes in schedule.items():
        for prefix in prefixes:
            if not any(n.startswith(prefix) for n in names):
                raise UsageError(f"Progressive(unfreeze=...) epoch {epoch}: no parameter name starts with {prefix!r}; "
                                 f"names look like {names[:3]}")


def prepare(curriculum, progressive, train_data, model: nn.Module, epochs: int):
    """Check the curriculum and progressive settings against the data and the model, before
    training; returns (difficulty scores, curriculum ramp in epochs), both None without one."""
    difficulty = ramp = None
    if curriculum is not None:
        if not isinstance(train_data, TensorData):
            raise UsageError("curriculum needs the tensor data path: pass train=(inputs, targets)")
        difficulty = check_curriculum(curriculum.difficulty, len(train_data))
        ramp = max(epochs // 2, 1) if curriculum.epochs is None else curriculum.epochs
    if progressive.resolution and not (isinstance(train_data, TensorData) and train_data.inputs.dim() == 4):
        shape = tuple(train_data.inputs.shape) if isinstance(train_data, TensorData) else "batches"
        raise UsageError(f"Progressive(resolution=...) resizes image batches (N, C, H, W); the train inputs are {shape}")
    if progressive.unfreeze:
        check_unfreeze(model, progressive.unfreeze)
        if min(progressive.unfreeze) > 0:
            raise UsageError(f"Progressive(unfreeze=...) starts at epoch {min(progressive.unfreeze)}, so epoch 0 would "
                             "train nothing; list the parameter name prefixes to train from epoch 0 (e.g. {0: ['head.']})")
        # Every parameter the schedule will ever unfreeze must be in the optimizer, even one
        # the user froze beforehand; the loop then sets each epoch's trainable set.
        apply_unfreeze(model, progressive.unfreeze, max(progressive.unfreeze))
    return difficulty, ramp
