"""Everything `fit` checks before it trains, in one place: one clear line per bad input.

Two kinds of check:
- `check_arguments`: the plain values (numbers, names, choices), before anything is built;
- `prepare_splits` / `check_fits`: the data against the model, on the device, before the
  first step: rows, dtypes (converting what has one obvious meaning, with a note), class
  indices in range over whole target tensors, and one forward + loss + metrics on two rows of
  every split (each metric reset before and after), so a shape mismatch in val or test is
  found now and not after an epoch.

The user's own exceptions (raised in their forward, loss or transforms) pass through
unchanged, with a note saying where `fit` was; only errors raised inside torch or endtoend,
which are about shapes and dtypes, become a UsageError naming the shapes.
"""

from __future__ import annotations

import numbers
import os
import traceback
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from endtoend.errors import UsageError
from endtoend.train.data import TensorData, as_data
from endtoend.train.evaluate import eval_mode
from endtoend.train.metrics import direction, on_device
from endtoend.train.options import check_positive, is_integer, is_number
from endtoend.sources import in_torch_or_endtoend
from endtoend.train.schedules import SCHEDULES
from endtoend.train.setup import check_choice

AUDIT_MODES = ("warn", "error", "off")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

CLASS_INDEX_LOSSES = {F.cross_entropy, F.nll_loss}
REAL_TARGET_LOSSES = {F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy_with_logits}


def check_arguments(*, model, transforms, epochs, batch_size, lr, weight_decay, seed, checkpoint_every, log_every,
                    layer_norms_every, early_stopping, ema, monitor, resume, out, config, schedule, audit, precision,
                    splits, progress, activation_checkpointing, shard=False, channels_last="auto") -> None:
    """The plain values of fit's arguments: types, ranges and choices, before anything is built."""
    check_choice("schedule", schedule, SCHEDULES)
    check_choice("audit", audit, AUDIT_MODES)
    check_choice("precision", precision, PRECISIONS)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model must be a torch.nn.Module, got {type(model).__name__}; wrap a function in an "
                         "nn.Module whose forward calls it")
    if transforms is not None and not isinstance(transforms, nn.Module):
        raise UsageError(f"transforms must be a torch.nn.Module (e.g. nn.Sequential of tensor ops) or None, "
                         f"got {type(transforms).__name__}")
    check_positive("epochs", epochs, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    check_positive("lr", lr, optional=True, hint="; try lr=1e-3")
    if not (is_number(weight_decay) and weight_decay >= 0):
        raise UsageError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if not (is_integer(seed) and 0 <= seed < 2**64):
        raise UsageError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    check_positive("checkpoint_every", checkpoint_every, integer=True, optional=True, hint=" (steps)")
    check_positive("log_every", log_every, integer=True, hint=" (steps)")
    if layer_norms_every is not None and not (is_integer(layer_norms_every) and layer_norms_every >= 0):
        raise UsageError(f"layer_norms_every must be an integer >= 0 (0 or None: off), got {layer_norms_every!r}")
    check_positive("early_stopping", early_stopping, integer=True, optional=True, hint=" (epochs without improvement)")
    if ema is not None and not (is_number(ema) and 0 < ema < 1):
        raise UsageError(f"ema is the averaging decay and must be in (0, 1), got {ema!r}; try 0.999")
    if monitor is not None and not isinstance(monitor, str):
        raise UsageError(f"monitor must be a metric name such as 'val_loss', got {monitor!r}")
    for name, flag in (("resume", resume), ("progress", progress), ("activation_checkpointing", activation_checkpointing),
                       ("shard", shard)):
        if not isinstance(flag, bool):
            raise UsageError(f"{name} must be True or False, got {flag!r}")
    if channels_last != "auto" and not isinstance(channels_last, bool):
        raise UsageError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise UsageError(f"out must be a folder path (a str or pathlib.Path) or None, got {type(out).__name__}")
    if resume and out is None:
        raise UsageError("resume=True needs out= (the run directory to resume)")
    if config is not None and not isinstance(config, dict):
        raise UsageError(f"config must be a dict of values to record in config.json, got {type(config).__name__}")
    for split, data in splits.items():
        check_split_kind(split, data, epochs)


def check_split_kind(split: str, data: Any, epochs: int) -> None:
    """A one-shot iterator would be used up after one pass: refuse it where a split is read again."""
    if data is None or isinstance(data, (tuple, list)):
        return
    if hasattr(data, "__next__") and iter(data) is data and (split != "train" or epochs > 1):
        raise UsageError(f"{split} is a one-shot iterator (a generator), which is used up after one pass; "
                         "pass (inputs, targets) tensors or a DataLoader, which can be iterated again")


def check_shard(*, ema, progressive, precision, loss, activation_checkpointing) -> None:
    """What fit(shard=True) does not support yet, refused before anything is built. Each of
    these reads or rebuilds the parameters on one rank, or outside the sharded module."""
    unsupported = [
        ("ema=", ema is not None, "the average is kept of whole parameters"),
        ("progressive unfreezing", bool(progressive.unfreeze), "FSDP fixes which parameters train when it shards"),
        ("precision='fp16'", precision == "fp16", "its GradScaler does not reduce over shards"),
        ("an Objective with learned weights", any(True for _ in getattr(loss, "parameters", lambda: ())()),
         "its weights live outside the sharded model"),
        ("activation_checkpointing=True", activation_checkpointing, "untested with FSDP here"),
    ]
    for what, used, why in unsupported:
        if used:
            raise UsageError(f"shard=True does not support {what} yet ({why}); drop one of the two, "
                             "or train with DDP (shard=False)")


def check_monitor(monitor: str | None, metric_fns: dict[str, Any], *, has_val: bool, has_test: bool) -> str:
    """The metric that picks the best epoch (default val_loss, else train_loss); it must be one
    that the run computes and whose direction is known. Metrics need val or test data."""
    if metric_fns and not (has_val or has_test):
        raise UsageError(f"metrics={list(metric_fns)} are computed on val and test data, but neither was given; "
                         "pass val= or test=")
    monitor = monitor or ("val_loss" if has_val else "train_loss")
    available = ["train_loss"] + ([f"val_{name}" for name in ["loss", *metric_fns]] if has_val else [])
    if monitor not in available:
        raise UsageError(f"monitor={monitor!r} is never computed; choose one of {', '.join(available)}"
                         + ("" if has_val else " (val_* names need val= data)"))
    direction(monitor, metric_fns)  # a metric of unknown direction cannot pick the best epoch
    return monitor


def model_dtype(network: nn.Module) -> torch.dtype:
    return next((p.dtype for p in network.parameters() if p.is_floating_point()), torch.float32)


def prepare_splits(given: dict[str, Any], network: nn.Module, loss_fn: Callable, device: torch.device,
                   note: Callable[[str], None]) -> dict[str, Any]:
    """The splits as `fit` uses them (tensors on the device once, or iterables as given):
    empty splits refused, dtypes with one obvious meaning converted (with a note)."""
    splits = {split: as_data(data, split, device) for split, data in given.items()}
    if splits["train"] is None:
        raise UsageError("train data is required: pass (inputs, targets) or an iterable of batches")
    dtype = model_dtype(network)
    for split, data in splits.items():
        if data is None:
            continue
        if not isinstance(data, TensorData):
            if hasattr(data, "__len__") and len(data) == 0:
                raise UsageError(f"{split} data is empty (len 0); pass at least one batch")
            continue
        if len(data) == 0:
            raise UsageError(f"{split} data has 0 rows; pass at least one (inputs, targets) row")
        if data.inputs.dtype == torch.float64 and dtype != torch.float64:
            note(f"{split} inputs are float64 (numpy's default): converted to the model's {_name(dtype)}")
            data.inputs = data.inputs.to(dtype)
        data.targets = _converted_targets(split, data.targets, loss_fn, dtype, note)
    return splits


def _converted_targets(split: str, targets: torch.Tensor, loss_fn: Callable, dtype: torch.dtype,
                       note: Callable[[str], None]) -> torch.Tensor:
    if loss_fn in CLASS_INDEX_LOSSES:
        if targets.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
            note(f"{split} targets are {_name(targets.dtype)} class indices: converted to int64")
            return targets.long()
        if targets.dtype == torch.bool:
            raise UsageError(f"{split} targets are bool but cross_entropy wants class indices (int64) or "
                             "class probabilities (float); pass targets.long()")
        if targets.is_floating_point() and targets.dim() == 1:
            if torch.equal(targets, targets.round()):
                note(f"{split} targets are {_name(targets.dtype)} holding whole numbers: converted to int64 class indices")
                return targets.long()
            raise UsageError(f"{split} targets are {_name(targets.dtype)} with fractional values, but cross_entropy "
                             "wants int64 class indices (or one row of class probabilities per input); "
                             "use loss='mse' for regression")
        if targets.is_floating_point() and targets.dtype != dtype:
            return targets.to(dtype)
        return targets
    if loss_fn in REAL_TARGET_LOSSES and targets.dtype != dtype and not targets.is_complex():
        if targets.dtype != torch.float64:
            note(f"{split} targets are {_name(targets.dtype)}: converted to the model's {_name(dtype)} for the loss")
        return targets.to(dtype)
    return targets


def check_class_range(split: str, targets: torch.Tensor, outputs: Any, loss_fn: Callable) -> None:
    """Class indices must lie in [0, C) over the whole split (-100, cross_entropy's ignore
    index, is allowed): checked once, before training, instead of an IndexError mid-run."""
    if loss_fn not in CLASS_INDEX_LOSSES or not isinstance(outputs, torch.Tensor) or outputs.dim() < 2:
        return
    if targets.is_floating_point() or targets.dim() != outputs.dim() - 1:
        return
    classes = outputs.shape[1]
    valid = targets[targets != -100]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= classes):
        raise UsageError(f"{split} targets hold class indices from {int(valid.min())} to {int(valid.max())}, "
                         f"but the model outputs {classes} classes (valid: 0 to {classes - 1}); fix the labels "
                         "or the model's last layer")


def check_fits(split: str, network: nn.Module, loss_fn: Callable, metric_fns: dict[str, Any],
               inputs: Any, targets: Any, whole_targets: torch.Tensor | None = None) -> None:
    """One forward, loss and metrics on two rows of `split`, in eval mode, RNG untouched."""
    rows = (lambda v: v[:2] if isinstance(v, torch.Tensor) else v)
    inputs, targets = rows(inputs), rows(targets)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), eval_mode(network):
        stage = "forward"
        try:
            outputs = network(inputs)
            if not isinstance(outputs, (torch.Tensor, tuple, list, dict)):
                raise UsageError(f"the model returned {type(outputs).__name__}; it must return a tensor "
                                 "(or a tuple/dict of tensors) for the loss")
            if whole_targets is not None:
                check_class_range(split, whole_targets, outputs, loss_fn)
            stage = "loss"
            with warnings.catch_warnings():
                # mse_loss & co. broadcast (B, 1) against (B,) with only a warning: make it an error.
                warnings.filterwarnings("error", message=".*target size.*different to the input size")
                value = loss_fn(outputs, targets)
            for name, accumulator in metric_fns.items():
                stage = f"metric {name!r}"
                result = _metric_on_rows(accumulator, outputs, targets)
                if not (isinstance(result, (torch.Tensor, numbers.Real)) and torch.as_tensor(result).numel() == 1):
                    raise UsageError(f"metric {name!r} must return one number, got {_shape(result)}")
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised unchanged unless torch itself refused shapes
            if not _raised_in_library(err):
                _add_note(err, f"(endtoend.fit ran the {stage} on 2 rows of the {split} data before training)")
                raise
            raise UsageError(_describe(stage, split, err, inputs, targets,
                                       outputs if stage != "forward" else None, network)) from err
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise UsageError(f"the loss must return one scalar tensor, got {_shape(value)}")


def _metric_on_rows(accumulator: Any, outputs: Any, targets: Any) -> Any:
    """The metric's value on these rows alone; it is reset before and after, so the check
    leaves no state behind for the first real evaluation."""
    accumulator = on_device(accumulator, outputs, targets)
    accumulator.reset()
    try:
        accumulator.update(outputs, targets)
        return accumulator.compute()
    finally:
        accumulator.reset()


def _describe(stage: str, split: str, err: Exception, inputs, targets, outputs, network) -> str:
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
    site = _user_site(err)
    at = f" at {site}" if site else ""
    dtype = model_dtype(network)
    if stage == "forward":
        if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() and "type" in detail.lower():
            return (f"{split} inputs are {_name(inputs.dtype)} but the model computes in {_name(dtype)}{at}: convert "
                    "them (e.g. inputs.float() / 255 for images) or pass transforms= that does")
        if isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and inputs.dtype != dtype:
            return (f"{split} inputs are {_name(inputs.dtype)} but the model computes in {_name(dtype)}{at}: convert "
                    f"the batches (inputs.to(torch.{_name(dtype)})); only (inputs, targets) tensors are converted for you")
        return f"{split} inputs of shape {_shape(inputs)} do not fit the model{at}: {detail}"
    if stage == "loss":
        if (isinstance(targets, torch.Tensor) and isinstance(outputs, torch.Tensor) and not targets.is_floating_point()
                and targets.shape == outputs.shape):
            return (f"{split} targets look one-hot ({_name(targets.dtype)} of shape {_shape(targets)}): pass class "
                    "indices (targets.argmax(1)) or float probabilities (targets.float())")
        kind = _name(targets.dtype) if isinstance(targets, torch.Tensor) else type(targets).__name__
        return (f"model output shape {_shape(outputs)} does not fit target shape {_shape(targets)} ({split} "
                f"targets, {kind}): {detail.rstrip('.')}; change the model's last layer or the loss")
    return (f"{stage} does not fit model output shape {_shape(outputs)} and {split} target shape "
            f"{_shape(targets)}: {detail}; choose a metric for this kind of output")


def _raised_in_library(err: Exception) -> bool:
    """True when the innermost frame is inside torch or endtoend (a shape or dtype refusal),
    False when the user's own code raised it (theirs to see, with its own traceback)."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return False
    if in_torch_or_endtoend(os.path.abspath(frames[-1].filename)):
        return isinstance(err, (RuntimeError, ValueError, IndexError, TypeError, Warning))
    # A C-level torch op (x.view, x @ w) raises at the user's line with a builtin type; an
    # exception class the user defined, or one they raised themselves, is theirs.
    return type(err) is RuntimeError and "shape" in str(err)


def _user_site(err: Exception) -> str | None:
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        path = os.path.abspath(frame.filename)
        if not in_torch_or_endtoend(path):
            shown = os.path.relpath(path)  # relative to where the user runs, unless that climbs out
            return f"{path if shown.startswith('..') else shown}:{frame.lineno}"
    return None


def _add_note(err: Exception, note: str) -> None:
    if hasattr(err, "add_note"):  # Python 3.11+
        err.add_note(note)


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
