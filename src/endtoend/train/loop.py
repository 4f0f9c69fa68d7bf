"""`fit`: the one training loop, readable top to bottom.

    batches -> transforms (on the device, part of the graph) -> model -> one loss -> backward
    -> guard (skip non-finite) -> clip -> optimizer step -> EMA -> metrics -> run directory

Every feature is a visible branch here, not a hook fired from afar.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
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
from endtoend.objective import Objective
from endtoend.train import checkpoint as ckpt
from endtoend.train import flow
from endtoend.train.data import TensorData, as_data, eval_batches, steps_per_epoch, train_batches
from endtoend.train.evaluate import HIGHER_IS_BETTER, evaluate, resolve_loss, resolve_metrics
from endtoend.train.memory import checkpoint_blocks
from endtoend.train.progress import TrainingProgress
from endtoend.train.rng import capture_rng, restore_rng, seed_everything
from endtoend.train.rundir import RunWriter, distributed_rank, prepare_output_folder, truncate_metrics_after
from endtoend.train.schedules import SCHEDULES, lr_factor
from endtoend.train.stability import WeightEMA, all_finite, clip_gradients, first_non_finite, gradient_norms, weight_norms

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
DEFAULT_LR = {"adamw": 1e-3, "adam": 1e-3, "sgd": 0.1}
AUDIT_MODES = ("warn", "error", "off")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    skipped_steps: int = 0
    rollbacks: int = 0
    stopped_early: bool = False
    audit: Any = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainState:
    """Where the run is. Saved in state.json, restored on resume and on rollback."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_step: int | None = None
    epochs_without_improvement: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epoch_start_rng: dict[str, Any] | None = None
    lr_scale: float = 1.0          # lowered by each rollback
    skipped_steps: int = 0
    rollbacks: int = 0
    seconds: float = 0.0


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
    clip_norm: float | None = None,
    clip_value: float | None = None,
    agc: float | None = None,
    layer_norms_every: int | None = 50,
    guard: bool = True,
    bad_steps_before_rollback: int = 3,
    rollback_lr_factor: float = 0.5,
    max_rollbacks: int = 3,
    ema: float | None = None,
    precision: str = "auto",
    activation_checkpointing: bool = False,
    early_stopping: int | None = None,
    curriculum: torch.Tensor | None = None,
    curriculum_epochs: int | None = None,
    resolution_schedule: dict[int, int] | None = None,
    unfreeze_schedule: dict[int, list[str]] | None = None,
    config: dict[str, Any] | None = None,
) -> Run:
    """Train `model` on `train` by one loss and return a `Run`. See docs/training.md.

    Data: `train`, `val`, `test` are `(inputs, targets)` tensors (fast path: on the device
    once, batched by index) or any iterable of `(inputs, targets)` batches (a DataLoader).
    `transforms`: an nn.Module run on the device in front of the model (augmentation as
    batched tensor ops); it is part of the trained network and should act only in train mode.
    Run directory: `out` (None writes nothing), `resume`, `checkpoint_every`, `config`.
    Stability (docs/stability.md): `clip_norm`, `clip_value`, `agc`, `layer_norms_every`,
    `guard` with rollback, `ema`, `precision`, `activation_checkpointing`.
    Training flow (docs/training-flow.md): `early_stopping`, `curriculum`,
    `resolution_schedule`, `unfreeze_schedule`.
    """
    started = time.time()
    _check_choice("schedule", schedule, SCHEDULES)
    _check_choice("audit", audit, AUDIT_MODES)
    _check_choice("precision", precision, PRECISIONS)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    if resume and out is None:
        raise UsageError("resume=True needs out= (the run directory to resume)")
    if ema is not None and not 0 < ema < 1:
        raise UsageError(f"ema is the averaging decay and must be in (0, 1), got {ema!r}; try 0.999")

    rank, world_size = distributed_rank()
    is_main = rank == 0
    dev = resolve_device(device)
    loss_fn = resolve_loss(loss)
    # An Objective (named terms, learned weighting) trains alongside the model: its weights
    # join the optimizer, its terms are logged, and its state is checkpointed.
    objective = loss if isinstance(loss, Objective) else None
    metric_fns = resolve_metrics(metrics)
    seed_everything(seed)

    network = nn.Sequential(OrderedDict(transforms=transforms, model=model)) if transforms is not None else model
    network.to(dev)
    if objective is not None:
        objective.to(dev)
    train_data = as_data(train, "train", dev)
    val_data = as_data(val, "val", dev)
    test_data = as_data(test, "test", dev)
    if train_data is None:
        raise UsageError("train data is required: pass (inputs, targets) or an iterable of batches")
    if curriculum is not None:
        if not isinstance(train_data, TensorData):
            raise UsageError("curriculum needs the tensor data path: pass train=(inputs, targets)")
        curriculum = flow.check_curriculum(curriculum, len(train_data))
        curriculum_epochs = max(epochs // 2, 1) if curriculum_epochs is None else curriculum_epochs
    if unfreeze_schedule:
        flow.check_unfreeze(model, unfreeze_schedule)
        # Every parameter the schedule will ever unfreeze must be in the optimizer, even one
        # the user froze beforehand; the loop then sets each epoch's trainable set.
        flow.apply_unfreeze(model, unfreeze_schedule, max(unfreeze_schedule))
    if activation_checkpointing:
        checkpoint_blocks(model)

    opt = build_optimizer(optimizer, network, lr, weight_decay,
                           list(objective.parameters()) if objective is not None else [])
    peak_lrs = [group["lr"] for group in opt.param_groups]
    autocast_dtype = _autocast_dtype(precision, dev)
    scaler = torch.amp.GradScaler(dev.type) if autocast_dtype == torch.float16 else None
    # Entering even a disabled torch.autocast costs ~10% of a tiny model's step: skip it in fp32.
    autocast = (lambda: torch.autocast(dev.type, dtype=autocast_dtype)) if autocast_dtype else contextlib.nullcontext
    averaged = WeightEMA(network, decay=ema) if ema is not None else None
    per_epoch = steps_per_epoch(train_data, batch_size, world_size)
    total_steps = epochs * per_epoch
    monitor = monitor or ("val_loss" if val_data is not None else "train_loss")
    monitor_higher = HIGHER_IS_BETTER.get(monitor.split("_", 1)[-1], True)
    trainable = [p for p in network.parameters()]  # clipped; the Objective's weights are not
    guarded = trainable + (list(objective.parameters()) if objective is not None else [])

    identity = _identity(network, seed, batch_size, opt, loss, schedule, config or {})
    resolved = dict(config or {}, epochs=epochs, batch_size=batch_size, optimizer=type(opt).__name__,
                    lr=peak_lrs[0], weight_decay=weight_decay, schedule=schedule, seed=seed,
                    device=str(dev), checkpoint_every=checkpoint_every, monitor=monitor,
                    loss=getattr(loss_fn, "__name__", str(loss)), metrics=list(metric_fns),
                    transforms=type(transforms).__name__ if transforms is not None else None,
                    clip_norm=clip_norm, clip_value=clip_value, agc=agc, guard=guard,
                    bad_steps_before_rollback=bad_steps_before_rollback, rollback_lr_factor=rollback_lr_factor,
                    ema=ema, precision=str(autocast_dtype or torch.float32).replace("torch.", ""),
                    activation_checkpointing=activation_checkpointing, early_stopping=early_stopping,
                    curriculum=curriculum is not None, curriculum_epochs=curriculum_epochs,
                    resolution_schedule=resolution_schedule, unfreeze_schedule=unfreeze_schedule,
                    world_size=world_size, identity=identity)

    folder = Path(out) if out is not None else None
    if folder is not None and is_main:
        prepare_output_folder(folder, resume)
    bar = TrainingProgress(enabled=progress and is_main, total_steps=total_steps)

    # --- where to start: fresh, or the newest intact checkpoint -------------------------
    state = TrainState(epoch_start_rng=capture_rng())
    loaded = ckpt.load_latest_checkpoint(folder / "checkpoints", bar.warn) if resume else None
    if loaded is not None:
        _check_identity(loaded.state["identity"], identity, loaded.folder)
        state = _restore(loaded.state, loaded.model, loaded.optimizer, network, opt, averaged, objective, dev)
        truncate_metrics_after(folder, state.step)
        bar.note(f"resuming from {loaded.folder} (step {state.step}, epoch {state.epoch + 1})")
    # Logs open only now, once the folder is accepted and a resumed log is trimmed.
    writer = RunWriter(folder or Path("."), enabled=folder is not None and is_main)
    writer.write_json("config.json", resolved)

    def snapshot() -> dict[str, Any]:
        """Everything a rollback or a checkpoint needs, copied off the live objects.

        The tensors (for a rollback) are kept only when the guard can roll back, and on the
        host, so the last good state does not cost a second copy of the model in GPU memory.
        """
        snap = {"state": dataclasses.replace(state, history=list(state.history), seconds=state.seconds
                                             + time.time() - started), "rng": capture_rng()}
        if guard:
            snap.update(model=_host_copy(network.state_dict()), optimizer=_host_copy(opt.state_dict()),
                        ema=_host_copy(averaged.state_dict()) if averaged else None,
                        objective=_host_copy(objective.state_dict()) if objective is not None else None)
        return snap

    def save(is_best: bool) -> dict[str, Any] | None:
        """Checkpoint now; returns the snapshot (the new rollback point) or None if refused."""
        if (folder is None or not is_main) and not guard:
            return None  # nothing to write and nothing to roll back to: skip the scan and copies
        # Everything the checkpoint holds, not only the weights: Adam's second moment can
        # overflow to Inf from a huge but finite gradient while the weights stay finite.
        bad = first_non_finite({"model": network.state_dict(), "optimizer": opt.state_dict()["state"],
                                "ema": averaged.state_dict() if averaged is not None else {}})
        if bad is not None:
            bar.warn(f"not writing a checkpoint at step {state.step}: {bad} holds NaN/Inf")
            return None
        snap = snapshot()
        if folder is None or not is_main:
            return snap
        optimizer_tensors, optimizer_groups = ckpt.optimizer_to_tensors(opt)
        if averaged is not None:
            optimizer_tensors.update({f"ema.{k}": v for k, v in averaged.state_dict().items()})
        if objective is not None:
            optimizer_tensors.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
        saved = dict(dataclasses.asdict(snap["state"]), rng=snap["rng"], identity=identity,
                     config_hash=_hash(identity), optimizer_groups=optimizer_groups)
        root = folder / "checkpoints"
        ckpt.save_checkpoint(root, state.step, network.state_dict(), optimizer_tensors, saved)
        if is_best:
            (root / "best.json").write_text(json.dumps({"step": state.step, monitor: state.best_value}))
        ckpt.prune_checkpoints(root, keep_last=3, keep={state.best_step} if state.best_step is not None else set())
        return snap

    # --- check the first batch before spending time on training --------------------------
    # Drawing it (a DataLoader shuffles from the global RNG) must not shift any RNG stream.
    rng_before_checks = capture_rng()
    first_inputs, first_targets = next(iter(train_batches(train_data, batch_size, seed, 0, 0, dev, rank, world_size)))
    with _eval_mode(objective):
        _check_output_fits_targets(network, loss_fn, first_inputs, first_targets)
    audit_report = None
    if audit != "off" and loaded is None:
        audit_report = _run_audit(network, first_inputs, first_targets, loss_fn, audit, bar)
    restore_rng(rng_before_checks)
    del first_inputs, first_targets

    rollback_point = snapshot()          # the last good state: start, then every checkpoint
    best_weights = None                  # for early stopping: a copy of the best network state
    consecutive_bad = 0
    # A run resumed from the checkpoint written just before it stopped early stays stopped.
    stopped_early = bool(early_stopping) and state.epochs_without_improvement >= early_stopping

    # --- the loop -------------------------------------------------------------------------
    network.train()
    bar.start(completed=state.step)
    while state.epoch < epochs and not stopped_early:
        # Flow for this epoch: a pure function of the epoch, so resume sees the same.
        if unfreeze_schedule:
            flow.apply_unfreeze(model, unfreeze_schedule, state.epoch)
        input_size = flow.scheduled_value(resolution_schedule, state.epoch)
        pool = flow.curriculum_pool(curriculum, state.epoch, curriculum_epochs) if curriculum is not None else None

        if state.batch_in_epoch == 0:
            state.epoch_start_rng = capture_rng()
        else:
            # A DataLoader draws its shuffle from the global RNG when iterated: replay the
            # epoch's starting state to rebuild the same order, then restore the saved one.
            resumed_rng = capture_rng()
            restore_rng(state.epoch_start_rng)
        batches = train_batches(train_data, batch_size, seed, state.epoch, state.batch_in_epoch, dev,
                                rank, world_size, pool=pool)
        if state.batch_in_epoch > 0:
            batches = _prime(batches)
            restore_rng(resumed_rng)

        recent_losses: list[torch.Tensor] = []  # detached; summed at log time (one sync)
        rolled_back = False
        for inputs, targets in batches:
            factor = lr_factor(schedule, state.step, total_steps) * state.lr_scale
            for group, peak in zip(opt.param_groups, peak_lrs):
                group["lr"] = peak * factor
            if input_size is not None:
                inputs = flow.resize_batch(inputs, input_size)
            with autocast():
                outputs = network(inputs)
                loss_value = loss_fn(outputs, targets)
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss_value) if scaler else loss_value).backward()
            if scaler is not None:
                scaler.unscale_(opt)
            state.step += 1
            state.batch_in_epoch += 1

            # Non-finite guard: skip the step; after K bad steps in a row, roll back.
            # (Under fp16 the GradScaler skips overflowing steps itself; we check the loss.)
            if guard and not all_finite(loss_value, [] if scaler else guarded):
                state.skipped_steps += 1
                consecutive_bad += 1
                opt.zero_grad(set_to_none=True)
                if scaler is not None:  # close this step's unscale_ (the scale backs off), or the next one raises
                    scaler.update()
                writer.log(state.step, state.epoch, "train", "skipped_step", 1.0)
                if consecutive_bad >= bad_steps_before_rollback:
                    state = _rollback(rollback_point, network, opt, averaged, objective, state,
                                      rollback_lr_factor, max_rollbacks, bar)
                    consecutive_bad = 0
                    rolled_back = True
                    break
                continue
            consecutive_bad = 0

            if layer_norms_every and writer.enabled and state.step % layer_norms_every == 0:  # per-layer monitor
                for name, value in gradient_norms(network).items():
                    writer.log(state.step, state.epoch, "grad_norm", name, value)
                for name, value in weight_norms(network).items():
                    writer.log(state.step, state.epoch, "weight_norm", name, value)
            if clip_norm or clip_value or agc:
                pre_clip_norm = clip_gradients(trainable, max_norm=clip_norm, max_value=clip_value, agc=agc)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if averaged is not None:
                averaged.update(network)
            if objective is not None:
                objective.renormalize_()  # GradNorm keeps its weights summing to the number of terms

            recent_losses.append(loss_value.detach())
            # Reading the loss is a device sync: do it only when someone looks (logs, the bar)
            # and at the end of the epoch, so a GPU's queue is not drained every few steps.
            watched = writer.enabled or bar.enabled
            if (watched and state.step % log_every == 0) or state.batch_in_epoch == per_epoch:
                count = len(recent_losses)
                mean_loss = torch.stack(recent_losses).double().sum().item() / count
                state.epoch_loss_sum += mean_loss * count
                state.epoch_loss_count += count
                recent_losses.clear()
                writer.log(state.step, state.epoch, "train", "loss", mean_loss)
                writer.log(state.step, state.epoch, "train", "lr", peak_lrs[0] * factor)
                if clip_norm or clip_value or agc:
                    writer.log(state.step, state.epoch, "train", "grad_norm_before_clip", pre_clip_norm)
                for name, value in (objective.log_values().items() if objective is not None else ()):
                    writer.log(state.step, state.epoch, "train", name, value)  # loss/<term>, weight/<term>
                bar.update(state.step, state.epoch, epochs, mean_loss)
            if checkpoint_every and state.step % checkpoint_every == 0 and state.batch_in_epoch < per_epoch:
                rollback_point = save(is_best=False) or rollback_point
        if rolled_back:
            continue

        # end of epoch: evaluate (with the EMA weights when enabled), remember the best, checkpoint
        record = {"epoch": state.epoch + 1, "step": state.step,
                  "train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1)}
        if val_data is not None:
            for name, value in _evaluate(network, averaged, objective, val_data, batch_size, dev, loss_fn, metric_fns).items():
                record[f"val_{name}"] = value
                writer.log(state.step, state.epoch, "val", name, value)
        state.history.append(record)
        bar.epoch_done(record)
        current = record.get(monitor)
        is_best = current is not None and (state.best_value is None or (
            current > state.best_value if monitor_higher else current < state.best_value))
        if is_best:
            state.best_value, state.best_step, state.epochs_without_improvement = current, state.step, 0
            if early_stopping:
                best_weights = _evaluated_weights(network, averaged)
        else:
            state.epochs_without_improvement += 1
        state.epoch += 1
        state.batch_in_epoch = 0
        state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
        rollback_point = save(is_best) or rollback_point
        if early_stopping and state.epochs_without_improvement >= early_stopping:
            stopped_early = True
            bar.note(f"early stopping: {monitor} has not improved for {early_stopping} epochs")
    bar.stop()

    # --- final weights: the best ones (early stopping) or the EMA average ---------------------
    if stopped_early:
        best_weights = best_weights or _load_best_weights(folder, state.best_step, dev, averaged is not None)
        if best_weights is not None:
            network.load_state_dict(best_weights)
    elif averaged is not None:
        averaged.copy_to(network)

    # --- final evaluation and summary ------------------------------------------------------
    final = {"train_loss": state.history[-1]["train_loss"]} if state.history else {}
    for split, data in (("val", val_data), ("test", test_data)):
        if data is not None:
            for name, value in _evaluate(network, None, objective, data, batch_size, dev, loss_fn, metric_fns).items():
                final[f"{split}_{name}"] = value
                writer.log(state.step, state.epoch, split, f"final_{name}", value)
    weights_hash = ckpt.weights_sha256(network.state_dict())
    seconds = state.seconds + time.time() - started if loaded else time.time() - started
    summary = {"recipe": (config or {}).get("recipe"), "seed": seed, "metrics": final,
               "weights_sha256": weights_hash, "seconds": round(seconds, 3), "steps": state.step,
               "epochs": epochs, "device": str(dev), "skipped_steps": state.skipped_steps,
               "rollbacks": state.rollbacks, "stopped_early": stopped_early}
    writer.write_json("summary.json", summary)
    writer.close()
    if folder is not None and is_main:
        from endtoend.report import write_run_report

        write_run_report(folder)
    return Run(model=model, metrics=final, history=state.history, folder=folder, weights_sha256=weights_hash,
               seconds=seconds, steps=state.step, skipped_steps=state.skipped_steps, rollbacks=state.rollbacks,
               stopped_early=stopped_early, audit=audit_report, config=resolved)


# --- pieces of the loop that would hide its shape if inlined -------------------------------

def _host_copy(tree: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor copied to the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _host_copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_host_copy(v) for v in tree)
    return copy.deepcopy(tree)


def _restore(saved: dict[str, Any], model_tensors, optimizer_tensors, network, opt, averaged, objective,
             dev) -> TrainState:
    """Load a checkpoint's tensors into the live objects and return its TrainState."""
    network.load_state_dict({k: v.to(dev) for k, v in model_tensors.items()})
    extra = ("ema.", "objective.")
    ema_tensors = {k[4:]: v.to(dev) for k, v in optimizer_tensors.items() if k.startswith("ema.")}
    objective_tensors = {k[10:]: v.to(dev) for k, v in optimizer_tensors.items() if k.startswith("objective.")}
    ckpt.optimizer_from_tensors(opt, {k: v.to(dev) for k, v in optimizer_tensors.items() if not k.startswith(extra)},
                                saved["optimizer_groups"])
    if averaged is not None and ema_tensors:
        averaged.load_state_dict(ema_tensors)
    if objective is not None and objective_tensors:
        objective.load_state_dict(objective_tensors)
    restore_rng(saved["rng"])
    fields = {f.name for f in dataclasses.fields(TrainState)}
    return TrainState(**{k: v for k, v in saved.items() if k in fields})


def _rollback(point, network, opt, averaged, objective, state, lr_factor_on_rollback, max_rollbacks,
              bar) -> TrainState:
    """Return to the last good state (the last checkpoint) with a lower learning rate."""
    if state.rollbacks >= max_rollbacks:
        raise UsageError(f"training diverged: {max_rollbacks} rollbacks did not get past non-finite "
                         "losses/gradients; lower lr, enable clip_norm, or check the data")
    network.load_state_dict(point["model"])
    opt.load_state_dict(copy.deepcopy(point["optimizer"]))
    if averaged is not None and point["ema"] is not None:
        averaged.load_state_dict(point["ema"])
    if objective is not None:
        objective.load_state_dict(point["objective"])
    restore_rng(point["rng"])
    restored = dataclasses.replace(point["state"], history=list(point["state"].history),
                                   skipped_steps=state.skipped_steps, rollbacks=state.rollbacks + 1,
                                   lr_scale=state.lr_scale * lr_factor_on_rollback)
    bar.warn(f"non-finite steps in a row: rolled back to step {restored.step} with learning rate x{restored.lr_scale:g}")
    return restored


def _evaluate(network, averaged, objective, data, batch_size, dev, loss_fn, metric_fns) -> dict[str, float]:
    batches = eval_batches(data, batch_size * 4, dev)
    with _eval_mode(objective), (averaged.swapped(network) if averaged is not None else contextlib.nullcontext()):
        return evaluate(network, batches, loss_fn, metric_fns)


@contextlib.contextmanager
def _eval_mode(module: nn.Module | None):
    """Evaluate an Objective in eval mode (GradNorm's balancing needs gradients, eval has none)."""
    if module is None:
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _evaluated_weights(network, averaged) -> dict[str, torch.Tensor]:
    """A copy of the weights that evaluation uses (the EMA ones when enabled)."""
    if averaged is None:
        return {k: v.detach().clone() for k, v in network.state_dict().items()}
    with averaged.swapped(network):
        return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _load_best_weights(folder: Path | None, step: int | None, dev, use_ema: bool) -> dict[str, torch.Tensor] | None:
    """After a resume the in-memory best copy is gone: read the kept best checkpoint.

    With EMA the best was judged on the averaged weights, so those are the ones returned.
    """
    if folder is None or step is None:
        return None
    path = folder / "checkpoints" / ckpt.step_folder_name(step)
    if not path.exists():
        return None
    saved = ckpt.read_checkpoint(path)
    weights = dict(saved.model)
    for name in weights if use_ema else ():
        for key in (f"ema.params.{name}", f"ema.buffers.{name}"):
            if key in saved.optimizer:
                weights[name] = saved.optimizer[key]
    return {k: v.to(dev) for k, v in weights.items()}


def _autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
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


# --- helpers -------------------------------------------------------------------------------

def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" is CUDA when present, else the CPU; an explicit device must exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"bad device {device!r}: {err}; use 'auto', 'cpu' or 'cuda'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} asked for but CUDA is not available here; use device='auto'")
    return dev


def build_optimizer(optimizer: Any, network: nn.Module, lr: float | None, weight_decay: float,
                    objective_params: list[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The optimizer `fit` (and `lr_find`) use: a name, a callable `params -> Optimizer`, or an
    Optimizer instance; an Objective's weights get their own group without weight decay."""
    params = [p for p in network.parameters() if p.requires_grad]
    if not params:
        raise UsageError("the model has no trainable parameters (all have requires_grad=False)")
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(params + list(objective_params))
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)} or pass a callable")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    if not lr > 0:
        raise UsageError(f"lr must be a positive number, got {lr!r}")
    extra = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {}
    groups = [{"params": params}]
    if objective_params:  # loss weights are not regularised towards zero
        groups.append({"params": objective_params, "weight_decay": 0.0})
    return OPTIMIZERS[optimizer](groups, lr=lr, weight_decay=weight_decay, **extra)


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
