"""The builders `fit` (and `lr_find`) call before the loop: device, optimizer, precision, and
the run's identity (what a resume must match)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.train.options import check_positive
from endtoend.train.sharding import unsharded_class

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
DEFAULT_LR = {"adamw": 1e-3, "adam": 1e-3, "sgd": 0.1}


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" is CUDA when present, else the CPU; an explicit device must exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"bad device {device!r}: {err}; use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for but CUDA is not available here; use device='auto'")
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as err:  # mps, xpu, a CUDA index that does not exist ...
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"device {device!r} is not available here ({detail}); use device='auto'") from None
    return dev


def build_optimizer(optimizer: Any, network: nn.Module, lr: float | None, weight_decay: float,
                    objective_params: list[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The optimizer `fit` (and `lr_find`) use: a name, a callable `params -> Optimizer`, or an
    Optimizer instance; an Objective's weights get their own group without weight decay."""
    params = [p for p in network.parameters() if p.requires_grad]
    if not params:
        raise UsageError("the model has no trainable parameters (all have requires_grad=False)")
    objective_params = list(objective_params)
    if isinstance(optimizer, torch.optim.Optimizer):
        # An instance already holds its lr, weight decay and parameters: arguments that would
        # be silently ignored are refused instead.
        ignored = [name for name, given in (("lr", lr is not None), ("weight_decay", weight_decay != 0),
                                            ("an Objective with learned weights", bool(objective_params))) if given]
        if ignored:
            raise UsageError(f"optimizer is an Optimizer instance, which would ignore {' and '.join(ignored)}; "
                             "pass optimizer='adamw' (or a callable params -> Optimizer) instead")
        return optimizer
    if callable(optimizer):
        built = optimizer(params + objective_params)
        if not isinstance(built, torch.optim.Optimizer):
            raise UsageError(f"the optimizer callable must return a torch.optim.Optimizer, got {type(built).__name__}")
        return built
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)} or pass a callable")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    check_positive("lr", lr, hint="; try lr=1e-3")
    extra = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {}
    groups = [{"params": params}]
    if objective_params:  # loss weights are not regularised towards zero
        groups.append({"params": objective_params, "weight_decay": 0.0})
    return OPTIMIZERS[optimizer](groups, lr=lr, weight_decay=weight_decay, **extra)


def autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
    """None means plain fp32. "auto" picks bf16 on CUDA GPUs that support it, fp32 elsewhere:
    on CPUs without AVX512_BF16 or AMX, bf16 matmuls are 2x to 70x slower than fp32, and fp32
    keeps CPU runs bit-reproducible (docs/stability.md has the measurements)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "fp16" and dev.type != "cuda":
        raise UsageError("precision='fp16' needs a CUDA device (its loss scaling is CUDA-only); use 'bf16' or 'fp32'")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def run_identity(network: nn.Module, opt: torch.optim.Optimizer, *, recipe: Any, seed: int, batch_size: int,
                 loss: Any, schedule: str, data: dict[str, str | None], settings: dict[str, Any]) -> dict[str, Any]:
    """Every field that, if changed, would change the result: a resume must match each one.

    Output-only settings (progress, logging, checkpoint_every, metrics, audit) and `epochs`
    (which a resume may raise) are left out on purpose.
    """
    shapes = [(name, list(t.shape)) for name, t in network.state_dict().items()]
    group = opt.param_groups[0]
    identity = {"recipe": recipe, "model": f"{unsharded_class(network).__name__}:{stable_hash(shapes)[:16]}", "seed": seed,
                "batch_size": batch_size, "optimizer": type(opt).__name__, "lr": group.get("lr"),
                "weight_decay": group.get("weight_decay"),
                "optimizer_settings": {k: v for k, v in group.items() if k not in ("params", "lr", "weight_decay", "initial_lr")},
                "loss": getattr(loss, "__name__", str(loss)),
                "schedule": schedule, **{f"{split}_data": value for split, value in data.items()}, **settings}
    return json.loads(json.dumps(identity, default=str))  # as state.json will give it back (lists, not tuples)


def run_record(network: nn.Module, opt: torch.optim.Optimizer, splits: dict[str, Any], *, config: dict | None,
               seed: int, batch_size: int, loss: Any, schedule: str, settings: dict[str, Any],
               output_only: dict[str, Any], with_data: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity, config.json): what a resume must match, and every setting resolved. The
    grouped settings (Clipping, Guard, Curriculum, Progressive) are recorded by `describe()`.
    The data's fingerprints (a hash of every split) are taken only `with_data`, when a run
    directory is written: without one there is nothing to resume, and no reason to hash."""
    from endtoend.train.data import fingerprint

    curriculum, difficulty = settings["curriculum"]
    settings = dict(settings, clip=settings["clip"].describe(),
                    guard=settings["guard"].describe() if settings["guard"] else None,
                    precision=str(settings["precision"] or torch.float32).replace("torch.", ""),
                    curriculum=curriculum.describe(difficulty) if curriculum is not None else None,
                    progressive=settings["progressive"].describe())

    identity = run_identity(network, opt, recipe=(config or {}).get("recipe"), seed=seed, batch_size=batch_size,
                            loss=loss, schedule=schedule, settings=settings,
                            data={split: fingerprint(data) if with_data else None for split, data in splits.items()})
    resolved = dict(config or {}, batch_size=batch_size, optimizer=type(opt).__name__, lr=opt.param_groups[0]["lr"],
                    weight_decay=opt.param_groups[0].get("weight_decay"), schedule=schedule, seed=seed,
                    loss=identity["loss"], **settings, **output_only, identity=identity)
    return identity, resolved


def stable_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
