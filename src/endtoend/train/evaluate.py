"""Losses by name, and evaluation over a split (metrics: train/metrics.py, re-exported here)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from endtoend.errors import UsageError
from endtoend.train import distributed
from endtoend.train.metrics import HIGHER_IS_BETTER, METRICS, batch_size_of, on_device, resolve_metrics

# HIGHER_IS_BETTER, METRICS and resolve_metrics live in train/metrics.py; kept importable from here.
__all__ = ["HIGHER_IS_BETTER", "LOSSES", "METRICS", "batch_size_of", "eval_mode", "evaluate", "resolve_loss",
           "resolve_metrics"]

LossFn = Callable[[Any, Any], torch.Tensor]


LOSSES: dict[str, LossFn] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}


def resolve_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    if loss in LOSSES:
        return LOSSES[loss]
    raise UsageError(f"unknown loss {loss!r}; pass a callable or one of {', '.join(LOSSES)}")


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module | None) -> Iterator[None]:
    """`module` in eval mode for the block, then back in the mode it was in (None: nothing)."""
    if module is None:
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def kept_modes(model: torch.nn.Module) -> Iterator[None]:
    """Put back every submodule's own train/eval flag after the block (a frozen BatchNorm in
    eval mode inside a training model stays in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, loss_fn: LossFn, metrics: dict[str, Any], *,
             rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """The loss (a mean over rows, weighted by batch size) and every metric over the whole of
    `batches`: each accumulator is reset, updated per batch and computed once (train/metrics.py),
    so a corpus metric is its value over the split, not a mean of batch values. One device sync.

    Under several processes every rank iterates the same batches and runs the model on its
    rows of each; the outputs are all-gathered back into the whole batch, so the loss and
    every metric (a corpus metric too) see exactly what one process would."""
    live = dict(metrics)
    for accumulator in live.values():
        accumulator.reset()
    loss_total, count = None, 0
    try:
        with eval_mode(model):
            split = world_size > 1
            for inputs, targets in batches:
                outputs, split = _forward(model, inputs, rank, world_size, split)
                if loss_total is None:
                    live = {name: on_device(acc, outputs, targets) for name, acc in metrics.items()}
                n = batch_size_of(targets)
                weighted = loss_fn(outputs, targets).detach().to(torch.float64) * n
                loss_total = weighted if loss_total is None else loss_total + weighted
                count += n
                for accumulator in live.values():
                    accumulator.update(outputs, targets)
        if loss_total is None:
            return {}
        values = [loss_total / count] + [accumulator.compute() for accumulator in live.values()]
        row = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=loss_total.device).reshape(())
                           for v in values]).tolist()
    finally:
        for accumulator in live.values():  # no state outlives the evaluation
            accumulator.reset()
    return dict(zip(["loss", *metrics], row))


def _forward(model: torch.nn.Module, inputs: Any, rank: int, world_size: int, split: bool) -> tuple[Any, bool]:
    """The model's outputs on the whole batch, and whether to keep splitting batches. Split:
    each rank runs its rows and the outputs are all-gathered. When the outputs cannot be
    joined (a time-first (T, N, C) CTC output, a scalar, a padded time axis that follows each
    share's longest item), every rank runs the whole batch, and the rest of the split too:
    decided on all ranks together, so a sharded model's collective forwards stay in step."""
    leaves = distributed.tensors_in(inputs) if split else None
    if not leaves or not all(t.dim() > 0 and t.shape[0] >= world_size for t in leaves):
        return model(inputs), split
    mine = distributed.rows_of(inputs, rank, world_size)
    outputs = model(mine)
    rows = len(range(rank, leaves[0].shape[0], world_size))
    # Joinable when on every rank each output tensor has this rank's rows first and the same
    # other dimensions and dtype.
    produced = distributed.tensors_in(outputs)
    joinable = produced and all(t.dim() > 0 and t.shape[0] == rows for t in produced)
    shapes = distributed.gather([(tuple(t.shape[1:]), str(t.dtype)) for t in produced] if joinable else None,
                                world_size)
    if shapes[0] is None or any(other != shapes[0] for other in shapes[1:]):
        return model(inputs), False
    return distributed.join_rows(outputs, leaves[0].shape[0], world_size), True
