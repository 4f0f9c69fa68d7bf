"""`fit`: the one training loop, readable top to bottom.

    batches -> transforms (on the device, part of the graph) -> model -> loss -> backward
    -> optimizer step -> metrics -> run directory

Every feature is a visible branch here, not a hook fired from afar.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.train import checkpoint as ckpt
from endtoend.train.data import as_data, eval_batches, steps_per_epoch, train_batches
from endtoend.train.evaluate import HIGHER_IS_BETTER, evaluate, resolve_loss, resolve_metrics
from endtoend.train.progress import TrainingProgress
from endtoend.train.rng import capture_rng, restore_rng, seed_everything
from endtoend.train.rundir import RunWriter, distributed_rank, prepare_output_folder, truncate_metrics_after
from endtoend.train.schedules import SCHEDULES, lr_factor

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
DEFAULT_LR = {"adamw": 1e-3, "adam": 1e-3, "sgd": 0.1}
AUDIT_MODES = ("warn", "error", "off")


@dataclass
class Run:
    """What `fit` returns: final metrics, per-epoch history and where it all was written."""

    model: nn.Module
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    folder: Path | None
    weights_sha256: str
    seconds: float
    steps: int
    audit: Any = None
    config: dict[str, Any] = field(default_factory=dict)


def fit(
    model: nn.Module,
    train: Any,
    *,
    loss: str | Callable = "cross_entropy",
    val: Any = None,
    test: Any = None,
    metrics: Any = None,
    epochs: int = 10,
    batch_size: int = 64,
    optimizer: str | Callable[[Any], torch.optim.Optimizer] = "adamw",
    lr: float | None = None,
    weight_decay: float = 0.0,
    schedule: str = "one-cycle",
    transforms: nn.Module | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    audit: str = "warn",
    monitor: str | None = None,
    log_every: int = 10,
    config: dict[str, Any] | None = None,
) -> Run:
    """Train `model` on `train` by one loss and return a `Run`.

    `train`, `val`, `test`: `(inputs, targets)` tensors (fast path: on the device once,
    batched by index) or any iterable of `(inputs, targets)` batches (a DataLoader).
    `transforms`: an nn.Module run on the device before the model (augmentation as batched
    tensor ops); it is part of the trained network and, like Dropout, should act only in
    train mode. `out`: a run directory (config, metrics, TensorBoard, checkpoints, summary,
    report); None writes nothing. `resume=True` continues from the newest intact checkpoint
    in `out`. `config`: extra fields recorded in config.json (the CLI puts the recipe here).
    """
    started = time.time()
    _check_choice("schedule", schedule, SCHEDULES)
    _check_choice("audit", audit, AUDIT_MODES)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    if resume and out is None:
        raise UsageError("resume=True needs out= (the run directory to resume)")

    rank, world_size = distributed_rank()
    is_main = rank == 0
    dev = _resolve_device(device)
    loss_fn = resolve_loss(loss)
    metric_fns = resolve_metrics(metrics)
    seed_everything(seed)

    network = nn.Sequential(OrderedDict(transforms=transforms, model=model)) if transforms is not None else model
    network.to(dev)
    train_data = as_data(train, "train", dev)
    val_data = as_data(val, "val", dev)
    test_data = as_data(test, "test", dev)
    if train_data is None:
        raise UsageError("train data is required: pass (inputs, targets) or an iterable of batches")

    opt = _build_optimizer(optimizer, network, lr, weight_decay)
    peak_lrs = [group["lr"] for group in opt.param_groups]
    per_epoch = steps_per_epoch(train_data, batch_size, world_size)
    total_steps = epochs * per_epoch
    monitor = monitor or ("val_loss" if val_data is not None else "train_loss")
    monitor_higher = HIGHER_IS_BETTER.get(monitor.split("_", 1)[-1], True)

    identity = _identity(network, seed, batch_size, opt, loss, schedule, config or {})
    resolved = dict(config or {}, epochs=epochs, batch_size=batch_size, optimizer=type(opt).__name__,
                    lr=peak_lrs[0], weight_decay=weight_decay, schedule=schedule, seed=seed,
                    device=str(dev), checkpoint_every=checkpoint_every, monitor=monitor,
                    loss=getattr(loss_fn, "__name__", str(loss)), metrics=list(metric_fns),
                    transforms=type(transforms).__name__ if transforms is not None else None,
                    world_size=world_size, identity=identity)

    folder = Path(out) if out is not None else None
    if folder is not None and is_main:
        prepare_output_folder(folder, resume)
    bar = TrainingProgress(enabled=progress and is_main, total_steps=total_steps)

    # --- where to start: fresh, or the newest intact checkpoint -------------------------
    step, epoch, batch_in_epoch = 0, 0, 0
    history: list[dict[str, Any]] = []
    best = {"value": None, "step": None}
    elapsed_before = 0.0
    epoch_loss_sum, epoch_loss_count = 0.0, 0
    epoch_start_rng = capture_rng()
    loaded = ckpt.load_latest_checkpoint(folder / "checkpoints", bar.warn) if resume else None
    if loaded is not None:
        _check_identity(loaded.state["identity"], identity, loaded.folder)
        network.load_state_dict({k: v.to(dev) for k, v in loaded.model.items()})
        ckpt.optimizer_from_tensors(opt, {k: v.to(dev) for k, v in loaded.optimizer.items()},
                                    loaded.state["optimizer_groups"])
        state = loaded.state
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        history, best, elapsed_before = state["history"], state["best"], state["seconds"]
        epoch_loss_sum, epoch_loss_count = state["epoch_loss_sum"], state["epoch_loss_count"]
        epoch_start_rng = state["epoch_start_rng"]
        restore_rng(state["rng"])
        truncate_metrics_after(folder, step)
        bar.note(f"resuming from {loaded.folder} (step {step}, epoch {epoch + 1})")
    # Logs open only now, once the folder is accepted and a resumed log is trimmed.
    writer = RunWriter(folder or Path("."), enabled=folder is not None and is_main)
    writer.write_json("config.json", resolved)

    def save(is_best: bool) -> None:
        if folder is None or not is_main:
            return
        optimizer_tensors, optimizer_groups = ckpt.optimizer_to_tensors(opt)
        state = {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": capture_rng(),
                 "epoch_start_rng": epoch_start_rng, "history": history, "best": best,
                 "identity": identity, "config_hash": _hash(identity),
                 "seconds": elapsed_before + time.time() - started,
                 "epoch_loss_sum": epoch_loss_sum, "epoch_loss_count": epoch_loss_count,
                 "optimizer_groups": optimizer_groups}
        root = folder / "checkpoints"
        ckpt.save_checkpoint(root, step, network.state_dict(), optimizer_tensors, state)
        if is_best:
            (root / "best.json").write_text(json.dumps({"step": step, monitor: best["value"]}))
        ckpt.prune_checkpoints(root, keep_last=3, keep={best["step"]} if best["step"] is not None else set())

    # --- check the first batch before spending time on training --------------------------
    # Drawing it (a DataLoader shuffles from the global RNG) must not shift any RNG stream.
    rng_before_checks = capture_rng()
    first_inputs, first_targets = next(iter(train_batches(train_data, batch_size, seed, 0, 0, dev, rank, world_size)))
    _check_output_fits_targets(network, loss_fn, first_inputs, first_targets)
    audit_report = None
    if audit != "off" and loaded is None:
        audit_report = _run_audit(network, first_inputs, first_targets, loss_fn, audit, bar)
    restore_rng(rng_before_checks)
    del first_inputs, first_targets

    # --- the loop -------------------------------------------------------------------------
    network.train()
    bar.start(completed=step)
    while epoch < epochs:
        if batch_in_epoch == 0:
            epoch_start_rng = capture_rng()
        else:
            # A DataLoader draws its shuffle from the global RNG when iterated: replay the
            # epoch's starting state to rebuild the same order, then restore the saved one.
            resumed_rng = capture_rng()
            restore_rng(epoch_start_rng)
        batches = train_batches(train_data, batch_size, seed, epoch, batch_in_epoch, dev, rank, world_size)
        if batch_in_epoch > 0:
            batches = _prime(batches)
            restore_rng(resumed_rng)
        recent_losses: list[torch.Tensor] = []  # detached; summed at log time (one sync)
        for inputs, targets in batches:
            factor = lr_factor(schedule, step, total_steps)
            for group, peak in zip(opt.param_groups, peak_lrs):
                group["lr"] = peak * factor
            outputs = network(inputs)
            loss_value = loss_fn(outputs, targets)
            opt.zero_grad(set_to_none=True)
            loss_value.backward()
            opt.step()
            step += 1
            batch_in_epoch += 1
            recent_losses.append(loss_value.detach())
            if step % log_every == 0 or batch_in_epoch == per_epoch:
                count = len(recent_losses)
                mean_loss = torch.stack(recent_losses).double().sum().item() / count
                epoch_loss_sum += mean_loss * count
                epoch_loss_count += count
                recent_losses.clear()
                writer.log(step, epoch, "train", "loss", mean_loss)
                writer.log(step, epoch, "train", "lr", peak_lrs[0] * factor)
                bar.update(step, epoch, epochs, mean_loss)
            if checkpoint_every and step % checkpoint_every == 0 and batch_in_epoch < per_epoch:
                save(is_best=False)

        # end of epoch: evaluate, remember the best, checkpoint
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": epoch_loss_sum / max(epoch_loss_count, 1)}
        if val_data is not None:
            for name, value in evaluate(network, eval_batches(val_data, batch_size * 4, dev), loss_fn, metric_fns).items():
                record[f"val_{name}"] = value
                writer.log(step, epoch, "val", name, value)
        history.append(record)
        bar.epoch_done(record)
        current = record.get(monitor)
        is_best = current is not None and (
            best["value"] is None or (current > best["value"] if monitor_higher else current < best["value"]))
        if is_best:
            best = {"value": current, "step": step}
        epoch += 1
        batch_in_epoch = 0
        epoch_loss_sum, epoch_loss_count = 0.0, 0
        save(is_best)
    bar.stop()

    # --- final evaluation and summary ------------------------------------------------------
    final = {"train_loss": history[-1]["train_loss"]} if history else {}
    for split, data in (("val", val_data), ("test", test_data)):
        if data is not None:
            for name, value in evaluate(network, eval_batches(data, batch_size * 4, dev), loss_fn, metric_fns).items():
                final[f"{split}_{name}"] = value
                writer.log(step, epoch, split, f"final_{name}", value)
    weights_hash = ckpt.weights_sha256(network.state_dict())
    seconds = elapsed_before + time.time() - started
    summary = {"recipe": (config or {}).get("recipe"), "seed": seed, "metrics": final,
               "weights_sha256": weights_hash, "seconds": round(seconds, 3), "steps": step,
               "epochs": epochs, "device": str(dev)}
    writer.write_json("summary.json", summary)
    writer.close()
    if folder is not None and is_main:
        from endtoend.report import write_run_report

        write_run_report(folder)
    return Run(model=model, metrics=final, history=history, folder=folder, weights_sha256=weights_hash,
               seconds=seconds, steps=step, audit=audit_report, config=resolved)


# --- helpers -------------------------------------------------------------------------------

def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"bad device {device!r}: {err}; use 'auto', 'cpu' or 'cuda'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for but CUDA is not available here; use device='auto'")
    return dev


def _build_optimizer(optimizer: Any, network: nn.Module, lr: float | None, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in network.parameters() if p.requires_grad]
    if not params:
        raise UsageError("the model has no trainable parameters (all have requires_grad=False)")
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(params)
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)} or pass a callable")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    if not lr > 0:
        raise UsageError(f"lr must be a positive number, got {lr!r}")
    extra = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {}
    return OPTIMIZERS[optimizer](params, lr=lr, weight_decay=weight_decay, **extra)


def _identity(network: nn.Module, seed: int, batch_size: int, opt: torch.optim.Optimizer,
              loss: Any, schedule: str, config: dict[str, Any]) -> dict[str, Any]:
    """The fields that, if changed, would change the result: a resume must match them."""
    shapes = [(name, list(t.shape)) for name, t in network.state_dict().items()]
    return {"recipe": config.get("recipe"), "model": f"{type(network).__name__}:{_hash(shapes)[:16]}",
            "seed": seed, "batch_size": batch_size, "optimizer": type(opt).__name__,
            "loss": getattr(loss, "__name__", str(loss)), "schedule": schedule}


def _check_identity(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    for key in current:
        if saved.get(key) != current[key]:
            raise UsageError(
                f"cannot resume from {folder}: {key} differs (checkpoint has {saved.get(key)!r}, "
                f"this run has {current[key]!r}); resume with the same {key} or start a new --out"
            )


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _prime(batches):
    """Start a generator now (so a DataLoader draws its shuffle), yield its items later."""
    first = next(batches, None)
    if first is None:
        return iter(())

    def chained():
        yield first
        yield from batches
    return chained()


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _check_output_fits_targets(network: nn.Module, loss_fn: Callable, inputs: Any, targets: Any) -> None:
    """Run the loss once on two rows so a shape mismatch is one clear line, not a traceback."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        was_training = network.training
        network.eval()
        try:
            outputs = network(inputs[:2] if isinstance(inputs, torch.Tensor) else inputs)
            small_targets = targets[:2] if isinstance(targets, torch.Tensor) else targets
            with warnings.catch_warnings():
                # mse_loss & co. broadcast (B, 1) against (B,) with only a warning: make it an error.
                warnings.filterwarnings("error", message=".*target size.*different to the input size")
                value = loss_fn(outputs, small_targets)
        except Exception as err:  # noqa: BLE001 - any failure here is the user's shapes
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            shown = f"model output shape {_shape(outputs)}" if "outputs" in locals() else "the model"
            raise UsageError(
                f"{shown} does not fit target shape {_shape(small_targets if 'small_targets' in locals() else targets)}: "
                f"{detail}; change the model's last layer or the loss"
            ) from None
        finally:
            network.train(was_training)
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise UsageError(f"the loss must return one scalar tensor, got {_shape(value)}")


def _run_audit(network, inputs, targets, loss_fn, mode, bar):
    try:
        from endtoend.audit import audit as run_audit
    except ImportError:  # the audit is optional while it is being built
        return None
    report = run_audit(network, inputs, loss_fn=loss_fn, targets=targets)
    if report.findings and any(f.severity != "info" for f in report.findings):
        bar.show(report)
    if mode == "error" and not report.ok:
        raise UsageError("the differentiability audit found errors (above); fix them or pass audit='warn'")
    return report
