"""`fit`: the one training loop, readable top to bottom.

    batches -> transforms (on the device, part of the graph) -> model -> one loss -> backward
    -> guard (skip non-finite) -> clip -> optimizer step -> EMA -> metrics -> run directory

Every feature is a visible branch here, not a hook fired from afar. Argument checks live in
train/validate.py, advanced settings in train/options.py, builders in train/setup.py, and
everything a checkpoint holds (save, resume, rollback, best weights) in train/state.py.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.objective import Objective
from endtoend.train import distributed, flow, layout, sharding
from endtoend.train import validate as check
from endtoend.train.checkpoint import MODEL_FILE, weights_sha256, write_model_file
from endtoend.train.data import TensorData, eval_batches, steps_per_epoch, train_batches
from endtoend.train.evaluate import eval_mode, evaluate, resolve_loss
from endtoend.train.metrics import direction, resolve_metrics
from endtoend.train.memory import checkpoint_blocks, restore_blocks
from endtoend.train.options import (Clipping, Curriculum, Guard, Progressive, as_clipping, as_curriculum, as_guard,
                                    as_progressive, reject_unknown_arguments)
from endtoend.train.progress import TrainingProgress
from endtoend.train.rng import capture_rng, restore_rng, seed_everything
from endtoend.train.rundir import (RunWriter, check_output_folder, create_output_folder, start_anew,
                                   truncate_metrics_after)
from endtoend.train.schedules import lr_factor
from endtoend.train.setup import autocast_dtype, build_optimizer, resolve_device, run_record
from endtoend.train.stability import WeightEMA, all_finite, clip_gradients, gradient_norms, weight_norms
from endtoend.train.state import Checkpointer, TrainState

__all__ = ["Run", "fit", "Clipping", "Guard", "Curriculum", "Progressive", "build_optimizer", "resolve_device"]


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

    def summary(self, **run_fields: Any) -> dict[str, Any]:
        """summary.json: the final metrics, the weights' hash and how the run went."""
        return {"recipe": run_fields["recipe"], "seed": run_fields["seed"], "metrics": self.metrics,
                "weights_sha256": self.weights_sha256, "seconds": round(self.seconds, 3), "steps": self.steps,
                "epochs": run_fields["epochs"], "device": run_fields["device"], "skipped_steps": self.skipped_steps,
                "rollbacks": self.rollbacks, "stopped_early": self.stopped_early, "model_file": MODEL_FILE}


def fit(
    model: nn.Module, train: Any, *,
    # what to learn, and what to score it on
    loss: str | Callable = "cross_entropy", val: Any = None, test: Any = None, metrics: Any = None,
    # optimisation
    epochs: int = 10, batch_size: int = 64, optimizer: str | Callable[[Any], torch.optim.Optimizer] = "adamw",
    lr: float | None = None, weight_decay: float = 0.0, schedule: str = "one-cycle",
    transforms: nn.Module | None = None, seed: int = 0, device: str = "auto",
    shard: bool = False,  # under torchrun: FSDP instead of DDP (docs/scaling.md)
    # the run directory
    out: str | Path | None = None, resume: bool = False, checkpoint_every: int | None = None,
    config: dict[str, Any] | None = None, progress: bool = True, log_every: int = 10, audit: str = "warn",
    # stability (docs/stability.md)
    clip: float | Clipping | None = None, guard: bool | Guard = True, ema: float | None = None,
    precision: str = "auto", activation_checkpointing: bool = False, layer_norms_every: int | None = 50,
    channels_last: bool | str = "auto",  # convolutions in NHWC on the CPU (train/layout.py)
    # training flow (docs/training-flow.md)
    monitor: str | None = None, early_stopping: int | None = None,
    curriculum: torch.Tensor | Curriculum | None = None, progressive: Progressive | None = None,
    **unknown: Any,
) -> Run:
    """Train `model` on `train` by one loss and return a `Run`. See docs/training.md.

    Data: `train`, `val`, `test` are `(inputs, targets)` tensors (fast path: on the device
    once, batched by index) or any iterable of `(inputs, targets)` batches (a DataLoader).
    `transforms`: an nn.Module run on the device in front of the model (augmentation as
    batched tensor ops); it is part of the trained network and should act only in train mode.
    `out=None` writes nothing. Every argument is checked before anything is built or written.
    """
    started = time.time()
    # --- check every argument before anything is built or written -------------------------
    reject_unknown_arguments(unknown, list(inspect.signature(fit).parameters))
    check.check_arguments(model=model, transforms=transforms, epochs=epochs, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, seed=seed, checkpoint_every=checkpoint_every,
                          log_every=log_every, layer_norms_every=layer_norms_every, early_stopping=early_stopping,
                          ema=ema, monitor=monitor, resume=resume, out=out, config=config, schedule=schedule,
                          audit=audit, precision=precision, splits={"train": train, "val": val, "test": test},
                          progress=progress, activation_checkpointing=activation_checkpointing, shard=shard,
                          channels_last=channels_last)
    clip, guard, curriculum, progressive = as_clipping(clip), as_guard(guard), as_curriculum(curriculum), as_progressive(progressive)
    if shard:
        check.check_shard(ema=ema, progressive=progressive, precision=precision, loss=loss,
                          activation_checkpointing=activation_checkpointing)
    # several processes under torchrun: one process group, batch_size the global batch (train/distributed.py)
    rank, world_size = distributed.world()
    is_main = rank == 0
    distributed.check_batch(batch_size, world_size)
    dev = distributed.join(resolve_device(device))
    sharded = shard and world_size > 1  # FSDP: parameters, gradients, optimizer state split over the ranks
    loss_fn = resolve_loss(loss)
    # An Objective (named terms, learned weighting) trains alongside the model: its weights
    # join the optimizer, its terms are logged, and its state is checkpointed.
    objective = loss if isinstance(loss, Objective) else None
    metric_fns = resolve_metrics(metrics)
    monitor = check.check_monitor(monitor, metric_fns, has_val=val is not None, has_test=test is not None)
    folder = Path(out) if out is not None else None
    if folder is not None and is_main:
        check_output_folder(folder, resume)
    bar = TrainingProgress(enabled=progress and is_main, total_steps=1)
    seed_everything(seed)
    if shard and not sharded:
        bar.warn("shard=True in one process: nothing to shard over, training unsharded (start it with torchrun)")

    # --- build: the network on the device, the data, the optimizer --------------------------
    network = nn.Sequential(OrderedDict(transforms=transforms, model=model)) if transforms is not None else model
    if sharded:  # before the optimizer is built, which must hold the shards
        sharding.shard(network, dev)  # moves each unit to the device as it shards it: never the whole model
    else:
        network.to(dev)
    if objective is not None:
        objective.to(dev)
    splits = check.prepare_splits({"train": train, "val": val, "test": test}, network, loss_fn, dev, bar.note)
    # A DataLoader is rebuilt per rank, so each reads only its rows of every global batch.
    splits["train"] = distributed.rank_loader(splits["train"], rank, world_size)
    train_data, val_data, test_data = splits["train"], splits["val"], splits["test"]
    if isinstance(train_data, TensorData) and len(train_data) < batch_size:
        distributed.check_batch(len(train_data), world_size)  # the batch is the whole (smaller) split
    difficulty, curriculum_epochs = flow.prepare(curriculum, progressive, train_data, model, epochs)
    opt = build_optimizer(optimizer, network, lr, weight_decay,
                          list(objective.parameters()) if objective is not None else [])
    peak_lrs = [group["lr"] for group in opt.param_groups]
    precision_dtype = autocast_dtype(precision, dev)
    scaler = torch.amp.GradScaler(dev.type) if precision_dtype == torch.float16 else None
    # Entering even a disabled torch.autocast costs ~10% of a tiny model's step: skip it in fp32.
    autocast = (lambda: torch.autocast(dev.type, dtype=precision_dtype)) if precision_dtype else contextlib.nullcontext
    averaged = WeightEMA(network, decay=ema) if ema is not None else None
    per_epoch = steps_per_epoch(train_data, batch_size, world_size)
    total_steps = epochs * per_epoch
    bar.total_steps = total_steps
    monitor_higher = direction(monitor, metric_fns)
    trainable = list(network.parameters())  # clipped; the Objective's weights are not
    guarded = trainable + (list(objective.parameters()) if objective is not None else [])

    identity, resolved = run_record(
        network, opt, splits, config=config, seed=seed, batch_size=batch_size, loss=loss, schedule=schedule,
        settings=dict(transforms=type(transforms).__name__ if transforms is not None else None, clip=clip,
                      guard=guard, ema=ema, precision=precision_dtype, early_stopping=early_stopping, monitor=monitor,
                      curriculum=(curriculum, difficulty), progressive=progressive),
        output_only=dict(epochs=epochs, device=str(dev), metrics=list(metric_fns), checkpoint_every=checkpoint_every,
                         log_every=log_every, layer_norms_every=layer_norms_every,
                         activation_checkpointing=activation_checkpointing, world_size=world_size,
                         channels_last=channels_last),
        with_data=folder is not None)  # every rank checks the data it resumes on

    # --- where to start: fresh, or the newest intact checkpoint -------------------------
    keeper = Checkpointer(network, opt, averaged, objective, folder, identity, keep_rollback=guard is not None,
                          warn=bar.warn, writes=is_main, rank=rank, world_size=world_size, sharded=sharded)
    loaded = keeper.load_latest() if resume else None
    state = keeper.restore(loaded, dev) if loaded is not None else TrainState(epoch_start_rng=capture_rng())
    if resume and loaded is None and is_main:
        start_anew(folder, bar.warn)  # refused for a finished run whose checkpoints are gone
    seconds_before = state.seconds
    # A run resumed from the checkpoint written just before it stopped early stays stopped.
    stopped_early = bool(early_stopping) and state.epochs_without_improvement >= early_stopping
    summary_path = folder / "summary.json" if folder is not None else None
    complete = loaded is not None and (state.epoch >= epochs or stopped_early) and summary_path.exists()

    # --- check the data against the model (and audit it) before spending time on training -------
    audit_report, relaid = _check_data(splits, network, objective, loss_fn, metric_fns, batch_size, seed, dev, rank,
                                       world_size, audit=audit if loaded is None else "off", bar=bar,
                                       sizes=sorted(set((progressive.resolution or {}).values())),
                                       channels_last=not sharded and layout.wanted(channels_last, network, dev,
                                                                                  world_size))

    # --- nothing failed: from here on the run directory is written -----------------------------
    if complete:
        why = "it stopped early" if stopped_early else "raise epochs to train more"
        bar.warn(f"{folder} is already complete at epoch {state.epoch}; nothing to train ({why}); no file was changed")
    writes = folder is not None and is_main and not complete
    if writes:
        create_output_folder(folder)
        truncate_metrics_after(folder, state.step)  # a resumed run logs those steps again
    writer = RunWriter(folder or Path("."), enabled=writes)
    writer.write_json("config.json", resolved)
    keeper.snapshot(state, seconds_before)  # the last good state: start, then every checkpoint
    if activation_checkpointing:
        checkpoint_blocks(model)
    consecutive_bad = 0
    distributed.barrier(world_size)  # every rank has read the checkpoint before rank 0 writes one
    # what the step calls: DDP under several processes; a sharded network syncs its own gradients
    stepped = network if sharded else distributed.wrap(network, dev, world_size)

    # --- the loop -------------------------------------------------------------------------
    network.train()
    bar.start(completed=state.step)
    try:
        while state.epoch < epochs and not stopped_early:
            # Flow for this epoch: a pure function of the epoch, so resume sees the same.
            if progressive.unfreeze:
                if flow.apply_unfreeze(model, progressive.unfreeze, state.epoch) and world_size > 1:
                    stepped = distributed.wrap(network, dev, world_size)  # DDP fixes its parameters when built
            input_size = flow.scheduled_value(progressive.resolution, state.epoch)
            pool = flow.curriculum_pool(difficulty, state.epoch, curriculum_epochs) if curriculum is not None else None

            batches = _epoch_batches(state, train_data, batch_size, seed, dev, rank, world_size, pool)
            recent_losses: list[torch.Tensor] = []  # detached; summed at log time (one sync)
            rolled_back = False
            for inputs, targets in batches:
                factor = lr_factor(schedule, state.step, total_steps) * state.lr_scale
                for group, peak in zip(opt.param_groups, peak_lrs):
                    group["lr"] = peak * factor
                if input_size is not None:
                    inputs = flow.resize_batch(inputs, input_size)
                with autocast():
                    outputs = stepped(inputs)
                    loss_value = loss_fn(outputs, targets)
                opt.zero_grad(set_to_none=True)
                (scaler.scale(loss_value) if scaler else loss_value).backward()
                if scaler is not None:
                    scaler.unscale_(opt)
                if objective is not None:
                    distributed.average_gradients(objective.parameters(), world_size)  # DDP averages the network's
                state.step += 1
                state.batch_in_epoch += 1

                # Non-finite guard: skip the step; after K bad steps in a row, roll back.
                # (Under fp16 the GradScaler skips overflowing steps itself; we check the loss.)
                if guard and distributed.any_rank(not all_finite(loss_value, [] if scaler else guarded), dev, world_size):
                    state.skipped_steps += 1
                    consecutive_bad += 1
                    opt.zero_grad(set_to_none=True)
                    if scaler is not None:  # close this step's unscale_ (the scale backs off), or the next one raises
                        scaler.update()
                    writer.log(state.step, state.epoch, "train", "skipped_step", 1.0)
                    if consecutive_bad >= guard.bad_steps_before_rollback:
                        state = keeper.rollback(state, guard.rollback_lr_factor, guard.max_rollbacks)
                        consecutive_bad, rolled_back = 0, True
                        break
                    continue
                consecutive_bad = 0

                # per-layer monitor (every rank measures its shards when sharded; rank 0 writes)
                if layer_norms_every and (writer.enabled or sharded) and state.step % layer_norms_every == 0:
                    for name, value in gradient_norms(network).items():
                        writer.log(state.step, state.epoch, "grad_norm", name, value)
                    for name, value in weight_norms(network).items():
                        writer.log(state.step, state.epoch, "weight_norm", name, value)
                if clip.enabled:
                    pre_clip_norm = clip_gradients(trainable, max_norm=clip.norm, max_value=clip.value, agc=clip.agc)
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
                # Several processes log at the same steps: the loss is averaged over the ranks.
                if (((writer.enabled or bar.enabled or world_size > 1) and state.step % log_every == 0)
                        or state.batch_in_epoch == per_epoch):
                    _log_train(state, recent_losses, writer, bar, epochs, lr=peak_lrs[0] * factor, objective=objective,
                               pre_clip_norm=pre_clip_norm if clip.enabled else None, world_size=world_size)
                if checkpoint_every and state.step % checkpoint_every == 0 and state.batch_in_epoch < per_epoch:
                    keeper.save(state, seconds_before + time.time() - started, monitor)
            if rolled_back:
                continue

            # end of epoch: evaluate (with the EMA weights when enabled), remember the best, checkpoint
            record = {"epoch": state.epoch + 1, "step": state.step,
                      "train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1)}
            if val_data is not None:
                for name, value in _evaluate(network, averaged, objective, val_data, batch_size, dev, loss_fn, metric_fns,
                                                 rank, world_size).items():
                    record[f"val_{name}"] = value
                    writer.log(state.step, state.epoch, "val", name, value)
            state.history.append(record)
            bar.epoch_done(record)
            if state.end_epoch(record.get(monitor), higher_is_better=monitor_higher) and early_stopping:
                keeper.remember_best()
            keeper.save(state, seconds_before + time.time() - started, monitor)
            if early_stopping and state.epochs_without_improvement >= early_stopping:
                stopped_early = True
                bar.note(f"early stopping: {monitor} has not improved for {early_stopping} epochs")
    finally:
        bar.stop()
        if activation_checkpointing:
            restore_blocks(model)  # leave the user's modules as they were
        if relaid:
            layout.restore(network)  # and in the memory layout they came in

    # --- final weights: the best ones (early stopping) or the EMA average ---------------------
    keeper.use_final_weights(stopped_early=stopped_early, best_step=state.best_step, device=dev)

    # --- final evaluation and summary ------------------------------------------------------
    if complete:  # the record stands as written: report it, recompute nothing
        saved = json.loads(summary_path.read_text())
        metrics, seconds = saved["metrics"], saved["seconds"]
    else:
        metrics = {"train_loss": state.history[-1]["train_loss"]} if state.history else {}
        for split, data in (("val", val_data), ("test", test_data)):
            for name, value in (_evaluate(network, None, objective, data, batch_size, dev, loss_fn, metric_fns, rank,
                                                     world_size).items()
                                if data is not None else ()):
                metrics[f"{split}_{name}"] = value
                writer.log(state.step, state.epoch, split, f"final_{name}", value)
        seconds = seconds_before + time.time() - started
    final = keeper.model_state()  # sharded: the full weights on rank 0 only
    digest = distributed.from_rank0(weights_sha256(final) if is_main else None) if sharded else weights_sha256(final)
    run = Run(model=model, metrics=metrics, history=state.history, folder=folder,
              weights_sha256=digest, seconds=seconds, steps=state.step,
              skipped_steps=state.skipped_steps, rollbacks=state.rollbacks, stopped_early=stopped_early,
              audit=audit_report, config=resolved)
    if writes:  # before summary.json, so a finished run directory always holds its model
        write_model_file(folder, _model_weights(final, with_transforms=transforms is not None))
    writer.write_json("summary.json", run.summary(recipe=(config or {}).get("recipe"), seed=seed, epochs=epochs,
                                                  device=str(dev)))
    writer.close()
    if writes:
        from endtoend.report import write_run_report

        write_run_report(folder)
    # Every rank leaves together: the run directory is whole when fit returns on any rank, and
    # no rank tears its process group down while rank 0 is still writing (that crashed at exit).
    distributed.barrier(world_size)
    return run


# --- pieces of the loop that would hide its shape if inlined -------------------------------

def _model_weights(network_state, with_transforms):
    """The user's model's weights out of the network's (without the transforms wrapper's prefix)."""
    if not with_transforms:
        return network_state
    return {name[len("model."):]: value for name, value in network_state.items() if name.startswith("model.")}


def _evaluate(network, averaged, objective, data, batch_size, dev, loss_fn, metric_fns, rank, world_size):
    batches = eval_batches(data, batch_size * 4, dev)
    # An Objective evaluates in eval mode: GradNorm's balancing needs gradients, eval has none.
    with eval_mode(objective), (averaged.swapped(network) if averaged is not None else contextlib.nullcontext()):
        distributed.same_buffers(network, world_size)  # every rank computes part of each batch
        return evaluate(network, batches, loss_fn, metric_fns, rank=rank, world_size=world_size)


def _check_data(splits, network, objective, loss_fn, metric_fns, batch_size, seed, dev, rank, world_size, audit, bar,
                sizes, channels_last):
    """A forward, loss and metrics on the first train batch (at each progressive input size
    too) and two rows of val and test, then the audit of the first batch, then the switch to
    channels_last when wanted and the first batch runs the same in it. Drawing the batch (a
    DataLoader shuffles from the global RNG) and running the model must not shift any RNG
    stream: the states are restored. Returns (the audit report, whether the layout changed)."""
    rng_before_checks = capture_rng()
    first_inputs, first_targets = _first_batch(splits["train"], batch_size, seed, dev, rank, world_size)
    with eval_mode(objective):
        for split, data in splits.items():
            if data is not None:
                inputs, targets = (first_inputs, first_targets) if split == "train" else _first_rows(data, dev)
                check.check_fits(split, network, loss_fn, metric_fns, inputs, targets,
                                 whole_targets=data.targets if isinstance(data, TensorData) else None)
        for size in sizes:
            check.check_fits(f"train (resized to {size}x{size})", network, loss_fn, metric_fns,
                             flow.resize_batch(first_inputs[:2], size), first_targets)
    report = _run_audit(network, first_inputs, first_targets, loss_fn, audit, bar) if audit != "off" else None
    relaid = channels_last and layout.adopt(network, first_inputs, bar.note)
    restore_rng(rng_before_checks)
    return report, relaid


def _epoch_batches(state, data, batch_size, seed, dev, rank, world_size, pool):
    """The batches of the current epoch from where the run stands (mid-epoch after a resume)."""
    if state.batch_in_epoch == 0:
        state.epoch_start_rng = capture_rng()
        return train_batches(data, batch_size, seed, state.epoch, 0, dev, rank, world_size, pool=pool)
    # A DataLoader draws its shuffle from the global RNG when iterated: replay the epoch's
    # starting state to rebuild the same order, then restore the state saved mid-epoch.
    resumed_rng = capture_rng()
    restore_rng(state.epoch_start_rng)
    batches = _prime(train_batches(data, batch_size, seed, state.epoch, state.batch_in_epoch, dev, rank,
                                   world_size, pool=pool))
    restore_rng(resumed_rng)
    return batches


def _first_batch(data, batch_size, seed, dev, rank, world_size):
    first = next(iter(train_batches(data, batch_size, seed, 0, 0, dev, rank, world_size)), None)
    if first is None:
        raise UsageError("the train data yields no batches (an empty DataLoader?); pass at least one batch")
    return first


def _first_rows(data, dev):
    if isinstance(data, TensorData):
        return data.inputs[:2], data.targets[:2]
    first = next(iter(eval_batches(data, 2, dev)), None)
    if first is None:
        raise UsageError("a val or test iterable yields no batches; pass at least one batch or None")
    return first


def _log_train(state, recent_losses, writer, bar, epochs, *, lr, objective, pre_clip_norm, world_size) -> None:
    """Log the mean loss of the steps since the last log (one device sync; several processes:
    the mean over the ranks' equal shares, the one-process loss), the lr, the pre-clip
    gradient norm and an Objective's terms and weights; update the bar."""
    count = len(recent_losses)
    mean_loss = distributed.mean_over_ranks(torch.stack(recent_losses).double().sum(), world_size).item() / count
    state.epoch_loss_sum += mean_loss * count
    state.epoch_loss_count += count
    recent_losses.clear()
    writer.log(state.step, state.epoch, "train", "loss", mean_loss)
    writer.log(state.step, state.epoch, "train", "lr", lr)
    if pre_clip_norm is not None:
        writer.log(state.step, state.epoch, "train", "grad_norm_before_clip", pre_clip_norm)
    for name, value in (objective.log_values().items() if objective is not None else ()):
        writer.log(state.step, state.epoch, "train", name, value)  # loss/<term>, weight/<term>
    bar.update(state.step, state.epoch, epochs, mean_loss)


def _prime(batches):
    """Start a generator now (so a DataLoader draws its shuffle), yield its items later."""
    first = next(batches, None)
    if first is None:
        return iter(())

    def chained():
        yield first
        yield from batches
    return chained()


def _run_audit(network, inputs, targets, loss_fn, mode, bar):
    from endtoend.audit import audit as run_audit  # imported here: the audit pulls in rich rendering

    report = run_audit(network, inputs, loss_fn=loss_fn, targets=targets)
    if report.findings and any(f.severity != "info" for f in report.findings):
        bar.show(report)
    if mode == "error" and not report.ok:
        raise UsageError("the differentiability audit found errors (above); fix them or pass audit='warn'")
    return report
