"""Losses by name, and evaluation over a split (metrics: train/metrics.py, re-exported here)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from endtoend.errors import UsageError
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


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, loss_fn: LossFn, metrics: dict[str, Any]) -> dict[str, float]:
    """The loss (a mean over rows, weighted by batch size) and every metric over the whole of
    `batches`: each accumulator is reset, updated per batch and computed once (train/metrics.py),
    so a corpus metric is its value over the split, not a mean of batch values. One device sync."""
    live = dict(metrics)
    for accumulator in live.values():
        accumulator.reset()
    loss_total, count = None, 0
    try:
        with eval_mode(model):
            for inputs, targets in batches:
                outputs = model(inputs)
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
