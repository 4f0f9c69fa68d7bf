"""`lr_find`: the learning-rate range test (Smith 2017, "Cyclical learning rates", section 3.3).

Train a copy of the model for `steps` steps while the learning rate grows exponentially from
`start_lr` to `end_lr`; record the loss (smoothed by an EMA) at each; stop once it diverges.
The suggestion is a tenth of the rate at the smoothed loss's minimum (see `suggest_lr`).
The user's model is never trained (a deep copy is) and the global RNG state is restored.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from endtoend.errors import UsageError
from endtoend.train.data import train_batches
from endtoend.train.evaluate import resolve_loss
from endtoend.train.options import is_integer, is_number
from endtoend.train.rundir import check_writable
from endtoend.train.setup import build_optimizer, resolve_device
from endtoend.train.rng import capture_rng, restore_rng, seed_everything
from endtoend.train.validate import prepare_splits

DIVERGED_FACTOR = 4.0   # stop once the smoothed loss exceeds this times its best value


@dataclass
class LRFindResult:
    """The sweep up to where it stopped, and the suggested learning rate."""

    lrs: list[float]
    losses: list[float]         # smoothed (bias-corrected EMA), what the suggestion reads
    raw_losses: list[float]
    suggested_lr: float
    stopped_early: bool         # True when the loss diverged before `steps`
    plot_path: Path | None = None


def lr_find(model: nn.Module, train: Any, *, loss: str | Callable = "cross_entropy",
            transforms: nn.Module | None = None, optimizer: str | Callable = "adamw", weight_decay: float = 0.0,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100, batch_size: int = 64,
            smoothing: float | None = None, seed: int = 0, device: str = "auto",
            out: str | Path | None = None) -> LRFindResult:
    """Sweep the learning rate exponentially on a copy of `model`; suggest one; plot if `out`.

    `train`, `loss`, `transforms`, `optimizer`, `weight_decay` and `batch_size` mean what they
    mean in `fit`. With `out`, writes out/lr_find.png and out/lr_find.json.

    The loss is smoothed by a bias-corrected EMA whose memory is a tenth of the sweep
    (`smoothing` = 1 - 10/steps, 0.9 for 100 steps). The 0.98 often used with 100 steps
    remembers ~50 steps, half the sweep: its curve then lags ~4 decades of lr behind the
    raw loss, and its minimum lands where the raw loss is already blowing up.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"lr_find needs an nn.Module as its model, got {type(model).__name__}")
    _check_arguments(start_lr, end_lr, steps, batch_size, weight_decay, smoothing)
    smoothing = max(0.0, 1 - 10 / steps) if smoothing is None else smoothing
    dev = resolve_device(device)
    loss_fn = resolve_loss(loss)
    # fit's own checks and conversions: empty data refused, float64 inputs and float class
    # targets converted (with a note on stderr)
    data = prepare_splits({"train": train}, model, loss_fn, dev,
                          lambda line: print(f"lr_find: {line}", file=sys.stderr))["train"]

    if out is not None:
        check_writable(Path(out))  # before the sweep, creating nothing

    rng_before = capture_rng()
    try:
        lrs, raw, smoothed, stopped = _sweep(model, data, loss_fn, transforms, optimizer, weight_decay,
                                             start_lr, end_lr, steps, batch_size, smoothing, seed, dev)
    finally:
        restore_rng(rng_before)  # the sweep seeds and draws; the user's streams must not move
    if not smoothed:
        raise UsageError("the loss was not finite even at the first step; check the data and the loss")
    result = LRFindResult(lrs, smoothed, raw, suggest_lr(lrs, smoothed), stopped)
    if out is not None:
        result.plot_path = _write(Path(out), result)
    return result


def _check_arguments(start_lr, end_lr, steps, batch_size, weight_decay, smoothing) -> None:
    """One UsageError naming the first bad argument, before anything is copied or drawn."""
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not is_number(value) or value <= 0:
            raise UsageError(f"{name} must be a positive finite number, got {value!r}; the default sweep is 1e-7 to 10")
    if not start_lr < end_lr:
        raise UsageError(f"end_lr must be greater than start_lr, got start_lr={start_lr!r}, end_lr={end_lr!r}")
    for name, value, minimum, typical in (("steps", steps, 5, "100 is typical"),
                                          ("batch_size", batch_size, 1, "64 is typical")):
        if not is_integer(value) or value < minimum:
            raise UsageError(f"{name} must be an integer of at least {minimum}, got {value!r}; {typical}")
    if not is_number(weight_decay) or weight_decay < 0:
        raise UsageError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if smoothing is not None and (not is_number(smoothing) or not 0 <= smoothing < 1):
        raise UsageError(f"smoothing is the EMA decay of the loss and must be in [0, 1), got {smoothing!r}")


def _sweep(model, data, loss_fn, transforms, optimizer, weight_decay, start_lr, end_lr, steps, batch_size,
           smoothing, seed, dev) -> tuple[list[float], list[float], list[float], bool]:
    seed_everything(seed)
    trained = copy.deepcopy(model)  # the user's model is never touched
    network = nn.Sequential(OrderedDict(transforms=copy.deepcopy(transforms), model=trained)) \
        if transforms is not None else trained
    network.to(dev).train()
    opt = build_optimizer(optimizer, network, start_lr, weight_decay)
    growth = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, raw, smoothed = [], [], []
    average, best = 0.0, math.inf
    epoch = 0
    while len(lrs) < steps:
        drawn = len(lrs)
        for inputs, targets in train_batches(data, batch_size, seed, epoch, 0, dev):
            lr = start_lr * growth ** len(lrs)
            for group in opt.param_groups:
                group["lr"] = lr
            value = loss_fn(network(inputs), targets)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            number = value.item()  # one sync per step: a sweep is ~100 steps
            if not math.isfinite(number):
                return lrs, raw, smoothed, True
            average = smoothing * average + (1 - smoothing) * number
            current = average / (1 - smoothing ** (len(lrs) + 1))  # bias correction of the EMA's start
            lrs.append(lr)
            raw.append(number)
            smoothed.append(current)
            best = min(best, current)
            if current > DIVERGED_FACTOR * best:
                return lrs, raw, smoothed, True
            if len(lrs) == steps:
                break
        if len(lrs) == drawn:
            raise UsageError("the training data gave no batch; pass at least one (inputs, targets) batch")
        epoch += 1  # a sweep longer than one epoch goes on with the next epoch's order
    return lrs, raw, smoothed, False


def suggest_lr(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the lr at the smoothed loss's minimum (kept inside the sweep).

    At the minimum the loss is about to blow up; a tenth of it is a rate that still trains
    fast but stays clear of that edge. Why not the steepest descent of the loss (Smith
    2017): a slope is the derivative of a noisy curve. On the mnist5k and digits sweeps,
    with the EMA decay anywhere in 0.8..0.98, the steepest point moved 6x and 11x
    (3.4e-3..2.2e-2, 4.9e-3..5.5e-2) while min/10 moved 1.2x and 3x (5.5e-3..6.6e-3,
    1.1e-2..3.5e-2).
    """
    return max(lrs[0], lrs[int(np.argmin(losses))] / 10)


def _write(folder: Path, result: LRFindResult) -> Path:
    from matplotlib.figure import Figure  # not pyplot: no backend to pick, no global state (see report.py)

    folder.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in asdict(result).items() if k != "plot_path"}
    (folder / "lr_find.json").write_text(json.dumps(saved, indent=1))
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(result.lrs, result.raw_losses, color="#bbbbbb", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.losses, color="#4c72b0", label="smoothed loss")
    ax.axvline(result.suggested_lr, color="#c44e52", linestyle="--", label=f"suggested lr {result.suggested_lr:.2g}")
    ax.set_xscale("log")
    # The diverging tail would squash the interesting part: cap the view at 2x the first loss.
    top, bottom = min(max(result.losses), 2 * result.losses[0]), min(result.losses)
    if top > bottom:
        margin = 0.05 * (top - bottom)
        ax.set_ylim(bottom - margin, top + margin)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    path = folder / "lr_find.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path

