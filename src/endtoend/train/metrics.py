"""Metrics as accumulators over a whole split.

Why accumulators: averaging per-batch values gives the mean of batch means. That is wrong for
corpus metrics (F1, WER, BLEU, mAP: a ratio of sums, not a mean of ratios) and, with an
uneven last batch, even for means. So a metric is an object that sees every batch and answers
once:

    reset()                    forget everything (called at the start of every evaluation)
    update(outputs, targets)   take one batch
    compute() -> float         the value over every batch since reset (a float or 0-d tensor)
    higher_is_better           True, False or None (unknown: it cannot be `monitor`)

torchmetrics `Metric` objects have exactly this shape and are used as they are (moved to the
outputs' device first). The built-ins keep exact sums and counts on the device and read them
once, at compute. A plain per-batch function `fn(outputs, targets) -> number` becomes a
`BatchMean`: exact for metrics that are means over rows, not for corpus metrics.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import torch

from endtoend.errors import UsageError

SPLITS = ("train_", "val_", "test_")


def batch_size_of(targets: Any) -> int:
    return targets.shape[0] if isinstance(targets, torch.Tensor) and targets.dim() > 0 else 1


def is_accumulator(obj: Any) -> bool:
    return all(callable(getattr(obj, name, None)) for name in ("reset", "update", "compute"))


class Accuracy:
    """Fraction of rows whose highest score is the target class, over the whole split."""

    higher_is_better = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._correct: torch.Tensor | int = 0
        self._count = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        hits = outputs.argmax(dim=-1) == targets
        self._correct = self._correct + hits.sum()  # stays on the device: no sync per batch
        self._count += hits.numel()

    def compute(self) -> torch.Tensor:
        return torch.as_tensor(self._correct, dtype=torch.float64) / self._count if self._count else _nan()


class MeanAbsoluteError:
    """Mean |output - target| over every element of the split."""

    higher_is_better = False

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sum: torch.Tensor | float = 0.0
        self._count = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        # No broadcasting: class logits (B, C) against labels (B,) would silently compare
        # every class score with the label.
        if outputs.shape != targets.shape:
            raise ValueError(f"mae compares outputs and targets of the same shape, got {tuple(outputs.shape)} and "
                             f"{tuple(targets.shape)} (it is a regression metric)")
        self._sum = self._sum + (outputs - targets).abs().sum(dtype=torch.float64)
        self._count += targets.numel()

    def compute(self) -> torch.Tensor:
        return torch.as_tensor(self._sum, dtype=torch.float64) / self._count if self._count else _nan()


class BatchMean:
    """A per-batch function `fn(outputs, targets) -> number` as a mean over rows: each batch's
    value weighted by its number of rows. Exact for metrics that are means over rows; a corpus
    metric (F1, WER, BLEU, mAP) needs an accumulator of its own."""

    def __init__(self, fn: Callable[[Any, Any], Any], *, higher_is_better: bool | None = None):
        self.fn = fn
        self.higher_is_better = higher_is_better
        self.__name__ = getattr(fn, "__name__", "metric")
        self.reset()

    def reset(self) -> None:
        self._total: torch.Tensor | None = None
        self._count = 0

    def update(self, outputs: Any, targets: Any) -> None:
        value = self.fn(outputs, targets)
        if not isinstance(value, (torch.Tensor, numbers.Real)):
            raise TypeError(f"a metric must return one number, got {type(value).__name__}")
        n = batch_size_of(targets)
        value = value.detach() if isinstance(value, torch.Tensor) else value
        # float64 straight from a Python float: through torch's default float32 it would lose digits
        weighted = torch.as_tensor(value, dtype=torch.float64) * n
        self._total = weighted if self._total is None else self._total + weighted
        self._count += n

    def compute(self) -> torch.Tensor:
        return self._total / self._count if self._count else _nan()


def metric(fn: Callable[[Any, Any], Any], *, higher_is_better: bool) -> BatchMean:
    """A per-batch function with a direction, so it can be `monitor`:
    `metrics={"f1": endtoend.metric(f1, higher_is_better=True)}` (a batch-size-weighted mean)."""
    if not callable(fn) or is_accumulator(fn):
        raise UsageError(f"metric() takes a per-batch function fn(outputs, targets) -> number, got "
                         f"{type(fn).__name__}; an accumulator (reset/update/compute) sets higher_is_better itself")
    if not isinstance(higher_is_better, bool):
        raise UsageError(f"higher_is_better must be True or False, got {higher_is_better!r}")
    return BatchMean(fn, higher_is_better=higher_is_better)


METRICS: dict[str, Callable[[], Any]] = {"accuracy": Accuracy, "mae": MeanAbsoluteError}
HIGHER_IS_BETTER = {"loss": False, **{name: make.higher_is_better for name, make in METRICS.items()}}


def resolve_metrics(metrics: Any) -> dict[str, Any]:
    """`fit(metrics=...)` as `{name: accumulator}`: names (`accuracy`, `mae`), per-batch
    callables (named by `__name__`), accumulators, or a `{name: any of these}` dict."""
    if metrics is None:
        return {}
    if isinstance(metrics, dict):
        items = list(metrics.items())
    elif isinstance(metrics, str) or callable(metrics) or is_accumulator(metrics):
        items = [(None, metrics)]
    elif isinstance(metrics, (list, tuple)):
        items = [(None, m) for m in metrics]
    else:
        raise UsageError(f"metrics must be a name, a callable, an accumulator, a list of them or a {{name: metric}} "
                         f"dict, got {type(metrics).__name__}")
    resolved: dict[str, Any] = {}
    for key, given in items:
        if isinstance(given, str):
            if given not in METRICS:
                raise UsageError(f"unknown metric {given!r}; pass a callable or one of {', '.join(METRICS)}")
            name, accumulator = given, METRICS[given]()
        elif is_accumulator(given):
            name, accumulator = getattr(given, "__name__", type(given).__name__), given
        elif callable(given):
            name = getattr(given, "__name__", "metric")
            accumulator = BatchMean(given, higher_is_better=getattr(given, "higher_is_better", None))
        else:
            raise UsageError(f"metric {given!r} is neither a name ({', '.join(METRICS)}), a callable nor an "
                             "accumulator (reset/update/compute)")
        name = key if key is not None else name
        if name == "loss" or name in resolved:
            why = "the loss is logged as loss" if name == "loss" else "two metrics have that name"
            raise UsageError(f"metric name {name!r} is taken ({why}); pass a {{name: metric}} dict with other names")
        resolved[name] = accumulator
    return resolved


def direction(name: str, metrics: dict[str, Any]) -> bool:
    """True when higher is better for the logged value `name` (`val_accuracy`, `train_loss`):
    the loss is lower-is-better, a metric says so by its `higher_is_better`."""
    base = name.split("_", 1)[1] if name.startswith(SPLITS) else name
    if base == "loss":
        return False
    higher = getattr(metrics.get(base), "higher_is_better", None)
    if not isinstance(higher, bool):
        raise UsageError(f"monitor={name!r} needs to know whether higher is better, but metric {base!r} does not say "
                         f"(higher_is_better={higher!r}); pass metrics={{{base!r}: endtoend.metric(fn, "
                         "higher_is_better=False)} (or True), or set higher_is_better on the function or accumulator")
    return higher


def on_device(accumulator: Any, outputs: Any, targets: Any) -> Any:
    """The accumulator on the outputs' device: a torchmetrics Metric keeps its state where it
    was built (the CPU) and refuses CUDA batches until moved."""
    move = getattr(accumulator, "to", None)
    device = _device_of(outputs) or _device_of(targets)
    if not callable(move) or device is None:
        return accumulator
    moved = move(device)
    return accumulator if moved is None else moved


def _device_of(value: Any) -> torch.device | None:
    if isinstance(value, torch.Tensor):
        return value.device
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    return next((d for d in map(_device_of, items) if d is not None), None)


def _nan() -> torch.Tensor:
    return torch.tensor(float("nan"), dtype=torch.float64)
