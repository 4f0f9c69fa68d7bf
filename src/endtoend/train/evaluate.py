"""Losses and metrics by name, and evaluation over a split."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from endtoend.errors import UsageError

LossFn = Callable[[Any, Any], torch.Tensor]
MetricFn = Callable[[Any, Any], torch.Tensor]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest score is the target class."""
    return (outputs.argmax(dim=-1) == targets).float().mean()


def mean_absolute_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean |output - target| over elements of the same shape (no broadcasting: class logits
    (B, C) against labels (B,) would silently compare every class score with the label)."""
    if outputs.shape != targets.shape:
        raise ValueError(f"mae compares outputs and targets of the same shape, got {tuple(outputs.shape)} and "
                         f"{tuple(targets.shape)} (it is a regression metric)")
    return (outputs - targets).abs().mean()


LOSSES: dict[str, LossFn] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}
METRICS: dict[str, MetricFn] = {"accuracy": accuracy, "mae": mean_absolute_error}
HIGHER_IS_BETTER = {"accuracy": True, "mae": False, "loss": False}


def resolve_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    if loss in LOSSES:
        return LOSSES[loss]
    raise UsageError(f"unknown loss {loss!r}; pass a callable or one of {', '.join(LOSSES)}")


def resolve_metrics(metrics: Any) -> dict[str, MetricFn]:
    if metrics is None:
        return {}
    if isinstance(metrics, dict):
        return dict(metrics)
    if isinstance(metrics, str):
        metrics = [metrics]
    resolved = {}
    for metric in metrics:
        if callable(metric):
            resolved[getattr(metric, "__name__", "metric")] = metric
        elif metric in METRICS:
            resolved[metric] = METRICS[metric]
        else:
            raise UsageError(f"unknown metric {metric!r}; pass a callable or one of {', '.join(METRICS)}")
    return resolved


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


def batch_size_of(targets: Any) -> int:
    return targets.shape[0] if isinstance(targets, torch.Tensor) and targets.dim() > 0 else 1


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, loss_fn: LossFn, metrics: dict[str, MetricFn]) -> dict[str, float]:
    """Mean loss and metrics over `batches`, weighted by batch size; one device sync."""
    totals: list[torch.Tensor] = []
    count = 0
    with eval_mode(model):
        for inputs, targets in batches:
            outputs = model(inputs)
            n = batch_size_of(targets)
            values = [loss_fn(outputs, targets)] + [fn(outputs, targets) for fn in metrics.values()]
            row = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=values[0].device) for v in values]) * n
            totals.append(row)
            count += n
    if not totals:
        return {}
    sums = torch.stack(totals).sum(0).tolist()
    return {name: value / count for name, value in zip(["loss", *metrics], sums)}
