"""Checkpoint state, one owner: what a checkpoint holds, saving it, resuming from it, rolling
back to it, and the best weights.

`fit` keeps its loop and its `TrainState`; everything that copies the live objects (the
network, the optimizer, the EMA average, an Objective's learned weights) to disk or back goes
through the `Checkpointer` here, so the tensor layout is known in one place:

    model.safetensors      the network's state_dict (transforms included when present)
    optimizer.safetensors  "state.<i>.<key>" optimizer tensors, "ema.<key>" the EMA average,
                           "objective.<key>" the Objective's state
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.train import checkpoint as ckpt
from endtoend.train import distributed, sharding
from endtoend.train.rng import capture_rng, restore_rng
from endtoend.train.rundir import write_json_atomically
from endtoend.train.stability import WeightEMA, first_non_finite

EMA_PREFIX = "ema."
OBJECTIVE_PREFIX = "objective."


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

    def end_epoch(self, value: float | None, higher_is_better: bool) -> bool:
        """Close the epoch: remember `value` (the monitored metric) if it is the best so far,
        count epochs without improvement, move to the next epoch. True when it is the best."""
        best = value is not None and (self.best_value is None or (
            value > self.best_value if higher_is_better else value < self.best_value))
        if best:
            self.best_value, self.best_step, self.epochs_without_improvement = value, self.step, 0
        else:
            self.epochs_without_improvement += 1
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_loss_sum, self.epoch_loss_count = 0.0, 0
        return best

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainState:
        """The state in a checkpoint's state.json; raises CorruptCheckpoint when a field is
        missing or of the wrong type (an edited file must not resume half-right)."""
        kinds = {"step": int, "epoch": int, "batch_in_epoch": int, "history": list, "best_value": (float, int, type(None)),
                 "best_step": (int, type(None)), "epochs_without_improvement": int, "epoch_loss_sum": (float, int),
                 "epoch_loss_count": int, "epoch_start_rng": (dict, type(None)), "lr_scale": (float, int),
                 "skipped_steps": int, "rollbacks": int, "seconds": (float, int)}
        for name, kind in kinds.items():
            value = saved.get(name, _MISSING)
            if value is _MISSING or isinstance(value, bool) or not isinstance(value, kind):
                raise ckpt.CorruptCheckpoint(f"state.json field {name!r} is missing or ill-typed ({value!r})")
            if kind is int and value < 0:
                raise ckpt.CorruptCheckpoint(f"state.json field {name!r} is negative ({value!r})")
        if not 0 < saved["lr_scale"] <= 1:
            raise ckpt.CorruptCheckpoint(f"state.json field 'lr_scale' is out of (0, 1] ({saved['lr_scale']!r})")
        for name in ("rng", "identity", "optimizer_groups"):
            if not isinstance(saved.get(name), (dict, list)):
                raise ckpt.CorruptCheckpoint(f"state.json field {name!r} is missing or ill-typed")
        return cls(**{name: saved[name] for name in kinds})


_MISSING = object()


class Checkpointer:
    """Saves, restores and rolls back the run's live objects; remembers the best weights.

    `folder` None writes nothing; `writes` False (a rank other than 0) reads checkpoints but
    writes none. `keep_rollback` keeps a host copy of the last good state for the non-finite
    guard (only then: it costs a copy of the model). Under several processes the saved RNG
    state is every rank's, in rank order, and each rank restores its own.

    `sharded` (fit(shard=True)): every copy of the network's and optimizer's state goes
    through train/sharding.py, which gathers the full state into rank 0's host memory and
    loads it back into every rank's shards; the files are those of an unsharded run.
    """

    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer, averaged: WeightEMA | None,
                 objective: nn.Module | None, folder: Path | None, identity: dict[str, Any], *,
                 keep_rollback: bool, keep_last: int = 3, warn: Callable[[str], None] = print,
                 writes: bool = True, rank: int = 0, world_size: int = 1, sharded: bool = False):
        self.writes, self.rank, self.world_size, self.sharded = writes, rank, world_size, sharded
        self.network, self.optimizer, self.averaged, self.objective = network, optimizer, averaged, objective
        self.root = folder / "checkpoints" if folder is not None else None
        self.identity = identity
        self.keep_rollback, self.keep_last, self.warn = keep_rollback, keep_last, warn
        self.rollback_point: dict[str, Any] | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    # --- resume ------------------------------------------------------------------------------

    def load_latest(self) -> ckpt.Checkpoint | None:
        """The newest intact checkpoint, checked against this run's identity; None if none."""
        if self.root is None:
            return None
        loaded = ckpt.load_latest_checkpoint(self.root, self.warn, check=lambda c: TrainState.from_saved(c.state))
        if loaded is not None:
            _check_identity(loaded.state["identity"], self.identity, loaded.folder)
        return loaded

    def restore(self, loaded: ckpt.Checkpoint, device: torch.device) -> TrainState:
        """Load a checkpoint's tensors into the live objects and return its TrainState."""
        self.load_model({k: v.to(device) for k, v in loaded.model.items()})
        optimizer_tensors, ema, objective = _unpack(loaded.optimizer, device)
        self._load_optimizer(ckpt.optimizer_from_tensors(self.optimizer, optimizer_tensors,
                                                         loaded.state["optimizer_groups"]))
        if self.averaged is not None and ema:
            self.averaged.load_state_dict(ema)
        if self.objective is not None and objective:
            self.objective.load_state_dict(objective)
        self._restore_rng(loaded.state["rng"])
        return TrainState.from_saved(loaded.state)

    def _restore_rng(self, saved: dict[str, Any] | list[dict[str, Any]]) -> None:
        """A checkpoint of several processes holds one RNG state per rank."""
        if isinstance(saved, list):
            if len(saved) != self.world_size:
                self.warn(f"the checkpoint was written by {len(saved)} processes, this run has {self.world_size}: "
                          "every rank takes rank 0's random state")
            saved = saved[self.rank] if len(saved) == self.world_size else saved[0]
        restore_rng(saved)

    # --- save and roll back --------------------------------------------------------------------

    def save(self, state: TrainState, seconds: float, monitor: str) -> bool:
        """Checkpoint now (and make it the rollback point); False when refused as non-finite."""
        if self.root is None and not self.keep_rollback:
            return False  # nothing to write and nothing to roll back to: skip the scan and copies
        # Everything the checkpoint holds, not only the weights: Adam's second moment can
        # overflow to Inf from a huge but finite gradient while the weights stay finite.
        model, optimizer = self.model_state(), self._optimizer_state()  # full copies on rank 0 when sharded
        bad = first_non_finite({"model": model, "optimizer": optimizer["state"],
                                "ema": self.averaged.state_dict() if self.averaged is not None else {}})
        if self.sharded:  # only rank 0 holds the full state: its answer is every rank's
            bad = distributed.from_rank0(bad)
        if bad is not None:
            self.warn(f"not writing a checkpoint at step {state.step}: {bad} holds NaN/Inf")
            return False
        self.snapshot(state, seconds, model, optimizer)
        if self.root is None or not self.writes:
            return True
        optimizer_tensors, optimizer_groups = ckpt.optimizer_to_tensors(optimizer)
        saved = dict(dataclasses.asdict(self.rollback_point["state"]), rng=self.rollback_point["rng"],
                     identity=self.identity, optimizer_groups=optimizer_groups)
        try:
            ckpt.save_checkpoint(self.root, state.step, model,
                                 optimizer_tensors | self._extra_tensors(), saved,
                                 check=lambda existing: TrainState.from_saved(existing.state))
            if state.best_step is not None:  # rewritten every time, so it never points at a stale step
                write_json_atomically(self.root / "best.json", {"step": state.best_step, monitor: state.best_value},
                                      indent=None)
            ckpt.prune_checkpoints(self.root, keep_last=self.keep_last,
                                   keep={state.best_step} if state.best_step is not None else set())
        except OSError as err:
            raise UsageError(f"could not write the checkpoint of step {state.step} under {self.root} "
                             f"({type(err).__name__}: {err}); free space or fix permissions, then resume "
                             "(the previous checkpoint is intact)") from None
        return True

    def snapshot(self, state: TrainState, seconds: float, model: dict[str, torch.Tensor] | None = None,
                 optimizer: dict[str, Any] | None = None) -> None:
        """Remember the current state as the rollback point (tensors on the host, only when the
        guard can roll back, so the last good state costs no second model in GPU memory).
        `model` and `optimizer`: their state dicts when the caller has just taken them."""
        rng = capture_rng()
        if self.world_size > 1:
            rng = distributed.gather(rng, self.world_size)
        point = {"state": dataclasses.replace(state, history=list(state.history), seconds=seconds), "rng": rng}
        if self.keep_rollback:
            point.update(model=_host_copy(model if model is not None else self.model_state()),
                         optimizer=_host_copy(optimizer if optimizer is not None else self._optimizer_state()),
                         extra=_host_copy(self._extra_tensors()))
        self.rollback_point = point

    def rollback(self, state: TrainState, lr_factor: float, max_rollbacks: int) -> TrainState:
        """Return to the rollback point (the last good checkpoint) with a lower learning rate."""
        if state.rollbacks >= max_rollbacks:
            raise UsageError(f"training diverged: {max_rollbacks} rollbacks did not get past non-finite "
                             "losses/gradients; lower lr, enable clip, or check the data")
        point = self.rollback_point
        self.load_model(point["model"])
        self._load_optimizer(copy.deepcopy(point["optimizer"]))
        _, ema, objective = _unpack(point["extra"], None)
        if self.averaged is not None:
            self.averaged.load_state_dict(ema)
        if self.objective is not None:
            self.objective.load_state_dict(objective)
        self._restore_rng(point["rng"])
        restored = dataclasses.replace(point["state"], history=list(point["state"].history),
                                       skipped_steps=state.skipped_steps, rollbacks=state.rollbacks + 1,
                                       lr_scale=state.lr_scale * lr_factor)
        self.warn(f"non-finite steps in a row: rolled back to step {restored.step} with learning rate "
                  f"x{restored.lr_scale:g}")
        return restored

    # --- best and final weights ------------------------------------------------------------------

    def remember_best(self) -> None:
        """Keep a copy of the weights evaluation uses (the EMA ones when enabled)."""
        with self.averaged.swapped(self.network) if self.averaged is not None else contextlib.nullcontext():
            self.best_weights = {k: v.detach().clone() for k, v in self.model_state().items()}

    def load_best(self, step: int | None, device: torch.device) -> dict[str, torch.Tensor] | None:
        """The best weights: the in-memory copy, or (after a resume) the kept best checkpoint's.

        With EMA the best was judged on the averaged weights, so those are the ones returned.
        """
        if self.best_weights is not None:
            return self.best_weights
        if self.root is None or step is None or not (self.root / ckpt.step_folder_name(step)).exists():
            return None
        saved = ckpt.read_checkpoint(self.root / ckpt.step_folder_name(step))
        weights = dict(saved.model)
        _, ema, _ = _unpack(saved.optimizer, None)
        if self.averaged is not None:
            for name in weights:
                for key in (f"params.{name}", f"buffers.{name}"):
                    if key in ema:
                        weights[name] = ema[key]
        return {k: v.to(device) for k, v in weights.items()}

    def use_final_weights(self, *, stopped_early: bool, best_step: int | None, device: torch.device) -> None:
        """The weights a run ends with: the best ones after early stopping, else the EMA
        average when enabled, else the last ones."""
        if stopped_early:
            best = self.load_best(best_step, device)
            if best is not None:
                self.load_model(best)
        elif self.averaged is not None:
            self.averaged.copy_to(self.network)

    # --- the network's and optimizer's state, whole or sharded ------------------------------------

    def model_state(self) -> dict[str, torch.Tensor]:
        """The network's state_dict (sharded: the full one on rank 0, {} on the others)."""
        return sharding.model_state(self.network) if self.sharded else self.network.state_dict()

    def load_model(self, state: dict[str, torch.Tensor]) -> None:
        if self.sharded:
            sharding.load_model_state(self.network, state)
        else:
            self.network.load_state_dict(state)

    def _optimizer_state(self) -> dict[str, Any]:
        return sharding.optimizer_state(self.network, self.optimizer) if self.sharded else self.optimizer.state_dict()

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        if self.sharded:
            sharding.load_optimizer_state(self.network, self.optimizer, state)
        else:
            self.optimizer.load_state_dict(state)

    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        extra = {}
        if self.averaged is not None:
            extra.update({EMA_PREFIX + k: v for k, v in self.averaged.state_dict().items()})
        if self.objective is not None:
            extra.update({OBJECTIVE_PREFIX + k: v for k, v in self.objective.state_dict().items()})
        return extra


def _unpack(tensors: dict[str, torch.Tensor], device: torch.device | None):
    """Split optimizer.safetensors' tensors into (optimizer, EMA, Objective) state."""
    def moved(v):
        return v.to(device) if device is not None else v
    ema = {k[len(EMA_PREFIX):]: moved(v) for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    objective = {k[len(OBJECTIVE_PREFIX):]: moved(v) for k, v in tensors.items() if k.startswith(OBJECTIVE_PREFIX)}
    optimizer = {k: moved(v) for k, v in tensors.items() if not k.startswith((EMA_PREFIX, OBJECTIVE_PREFIX))}
    return optimizer, ema, objective


def _check_identity(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    for key in current:
        if saved.get(key) != current[key]:
            raise UsageError(
                f"cannot resume from {folder}: {key} differs (checkpoint has {saved.get(key)!r}, "
                f"this run has {current[key]!r}); resume with the same {key} or start a new --out"
            )


def _host_copy(tree: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor copied to the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _host_copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_host_copy(v) for v in tree)
    return copy.deepcopy(tree)

