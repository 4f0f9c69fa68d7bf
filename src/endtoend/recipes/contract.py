"""The recipe contract, checked, and the pieces every recipe shares (docs/recipes.md).

A recipe is a module: NAME, DESCRIPTION, METRIC, HIGHER_IS_BETTER; load_data, staged_pipelines,
build_model, training; optionally predict, evaluate, read_input, format_prediction,
save_prediction, report_figure, report_animation, variants, variant_data, aggregate, build_pipeline,
regime_training; and the constants OPTIONS, FIT_TEST, TIMING_ITEMS, BUDGETS. This file says what
each part must be and calls the parts the same way for every pipeline, staged or end-to-end, so that their rows are comparable by
construction: one `evaluate` scores them all, on predictions of the same form.
"""

from __future__ import annotations

import math
import statistics
import time
import types
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.train.data import to_device

CONSTANTS = {"NAME": str, "DESCRIPTION": str, "METRIC": str, "HIGHER_IS_BETTER": bool}
FUNCTIONS = ("load_data", "staged_pipelines", "build_model", "training")
OPTIONAL_FUNCTIONS = ("predict", "evaluate", "read_input", "format_prediction", "save_prediction", "report_figure",
                      "report_animation", "variants", "variant_data", "aggregate", "build_pipeline", "regime_training")
OPTIONAL_CONSTANTS = {"OPTIONS": dict, "FIT_TEST": bool, "TIMING_ITEMS": int, "BUDGETS": tuple}
SEE = "see docs/recipes.md"


def check_recipe(module: ModuleType, where: str) -> ModuleType:
    """Every required name present and of the right kind, every optional one callable when
    given; `evaluate` required unless METRIC is the default's accuracy. Raises UsageError."""
    missing = [name for name in (*CONSTANTS, *FUNCTIONS) if not hasattr(module, name)]
    if missing:
        raise UsageError(f"{where} lacks {', '.join(missing)}: a recipe defines {', '.join((*CONSTANTS, *FUNCTIONS))} "
                         f"({SEE})")
    for name, kind in CONSTANTS.items():
        value = getattr(module, name)
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            raise UsageError(f"{where}: {name} must be a {'non-empty string' if kind is str else kind.__name__}, "
                             f"got {value!r} ({SEE})")
    for name, kind in OPTIONAL_CONSTANTS.items():
        value = getattr(module, name, None)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)):
            raise UsageError(f"{where}: {name} must be {'an integer' if kind is int else 'a ' + kind.__name__}, "
                             f"got {value!r} ({SEE})")
    for option, value in (getattr(module, "OPTIONS", None) or {}).items():
        if not (isinstance(option, str) and option.isidentifier() and isinstance(value, tuple) and len(value) == 2
                and isinstance(value[0], (int, float, str)) and not isinstance(value[0], bool)):
            raise UsageError(f"{where}: OPTIONS maps option names to (default, help), the default a number or a "
                             f"string; got {option!r}: {value!r} ({SEE})")
    budgets = getattr(module, "BUDGETS", None)
    if budgets is not None and not (budgets and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                    and 0 < b <= 1 for b in budgets)):
        raise UsageError(f"{where}: BUDGETS must be a tuple of fractions of the training set in (0, 1], such as "
                         f"(0.05, 0.2, 1.0), got {budgets!r} ({SEE})")
    if getattr(module, "TIMING_ITEMS", 0) < 0:
        raise UsageError(f"{where}: TIMING_ITEMS must be 0 (no timing) or more, got {module.TIMING_ITEMS} ({SEE})")
    for name in FUNCTIONS + OPTIONAL_FUNCTIONS:
        if hasattr(module, name) and not callable(getattr(module, name)):
            raise UsageError(f"{where}: {name} must be a function, got {type(getattr(module, name)).__name__} ({SEE})")
    if not hasattr(module, "evaluate") and module.METRIC != "accuracy":
        raise UsageError(f"{where}: METRIC = {module.METRIC!r} needs an evaluate(predictions, targets) that returns "
                         f"it; without one a recipe is scored by accuracy only ({SEE})")
    return module


# --- values in the forms each part expects --------------------------------------------------

def is_classes(targets: Any) -> bool:
    """Integer class labels, one per item: the default predict takes the argmax."""
    if isinstance(targets, list):
        return bool(targets) and all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in targets)
    if isinstance(targets, torch.Tensor):
        return targets.dim() == 1 and not targets.is_floating_point() and not targets.is_complex() \
            and targets.dtype != torch.bool
    if isinstance(targets, np.ndarray):
        return targets.ndim == 1 and np.issubdtype(targets.dtype, np.integer)
    return False


def to_numpy(value: Any) -> Any:
    """A tensor as a numpy array (from any device); anything else as it is."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def size_of(items: Any) -> int:
    try:
        return len(items)
    except TypeError:
        raise UsageError(f"the split's inputs must have a length (a tensor, an array, a list), got "
                         f"{type(items).__name__} ({SEE})") from None


def take(items: Any, indices: Any) -> Any:
    """The items at `indices`, in the split's own form (tensor, array or list)."""
    if isinstance(items, torch.Tensor):
        return items[torch.as_tensor(indices, dtype=torch.long, device=items.device)]
    if isinstance(items, np.ndarray):
        return items[np.asarray(indices, dtype=np.int64)]
    return [items[i] for i in indices]


def join(chunks: list[Any]) -> Any:
    """Predictions made chunk by chunk, as one: tensors and arrays concatenated, lists chained."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(chunks)
    if isinstance(first, np.ndarray):
        return np.concatenate(chunks)
    if isinstance(first, (list, tuple)):
        return [item for chunk in chunks for item in chunk]
    raise UsageError(f"predict() returned a {type(first).__name__}; predictions for several items must be a tensor, "
                     f"an array or a list ({SEE})")


def to_host(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(v) for v in value)
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    return value


# --- the parts, called the same way for every row ---------------------------------------------

def is_scikit_learn(pipeline: Any) -> bool:
    from sklearn.base import BaseEstimator

    return isinstance(pipeline, BaseEstimator)


def fit_staged(pipeline: Any, inputs: Any, targets: Any) -> None:
    """A scikit-learn estimator gets numpy arrays; a hand-built pipeline gets the split as it is."""
    if is_scikit_learn(pipeline):
        pipeline.fit(to_numpy(inputs), to_numpy(targets))
    else:
        pipeline.fit(inputs, targets)


def predict_staged(pipeline: Any, inputs: Any) -> Any:
    return pipeline.predict(to_numpy(inputs) if is_scikit_learn(pipeline) else inputs)


def default_predict(model: nn.Module, inputs: Any, classes: bool) -> Any:
    outputs = model(inputs)
    return outputs.argmax(dim=-1) if classes else outputs


class ModelPredictor:
    """The end-to-end model as a pipeline that predicts: the recipe's `predict` (or the default)
    in eval mode under inference mode, chunk by chunk, inputs on the model's device, host
    values back."""

    def __init__(self, recipe: ModuleType, model: nn.Module, *, classes: bool, batch_size: int = 256):
        self.recipe, self.model, self.classes, self.batch_size = recipe, model, classes, batch_size
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = first.dtype if first is not None and first.is_floating_point() else None

    def predict(self, inputs: Any) -> Any:
        from endtoend.train.evaluate import eval_mode

        chunks = []
        with eval_mode(self.model), torch.inference_mode():
            for start in range(0, size_of(inputs), self.batch_size):
                chunk = to_device(inputs[start:start + self.batch_size], self.device, self.dtype)
                if hasattr(self.recipe, "predict"):
                    chunks.append(to_host(self.recipe.predict(self.model, chunk)))
                else:
                    chunks.append(to_host(default_predict(self.model, chunk, self.classes)))
        return join(chunks)


def accuracy(predictions: Any, targets: Any) -> dict[str, float]:
    """The default evaluate: the fraction of items predicted exactly."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    if predictions.shape != targets.shape:
        raise UsageError(f"the default evaluate (accuracy) compares predictions and targets of the same shape, got "
                         f"{predictions.shape} and {targets.shape}; define predict() or evaluate() ({SEE})")
    return {"accuracy": float((predictions == targets).mean())}


def score(recipe: ModuleType, predictions: Any, targets: Any) -> dict[str, float]:
    """The recipe's `evaluate` (default: accuracy) over a whole split, tensors as numpy; the
    result must hold METRIC, and every value must be a real number."""
    evaluate = getattr(recipe, "evaluate", accuracy)
    scores = evaluate(to_numpy(predictions), to_numpy(targets))
    if not isinstance(scores, dict) or recipe.METRIC not in scores:
        got = f"keys {sorted(scores)}" if isinstance(scores, dict) else type(scores).__name__
        raise UsageError(f"recipe {recipe.NAME!r}: evaluate() must return a dict holding METRIC {recipe.METRIC!r}, "
                         f"got {got} ({SEE})")
    try:
        return {str(name): float(value) for name, value in scores.items()}
    except (TypeError, ValueError):
        raise UsageError(f"recipe {recipe.NAME!r}: evaluate() must return numbers, got "
                         f"{ {k: type(v).__name__ for k, v in scores.items()} } ({SEE})") from None


# --- the decision matrix's measures -----------------------------------------------------------

def latency(predict: Callable[[Any], Any], inputs: Any, items: int = 20) -> float:
    """Milliseconds to predict one item: the median over `items` single-item calls (after one
    warm-up call, which pays for lazy initialisation)."""
    count = min(items, size_of(inputs))
    predict(inputs[0:1])
    times = []
    for i in range(count):
        started = time.perf_counter()
        predict(inputs[i:i + 1])
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def count_parameters(pipeline: Any) -> int:
    """Learned numbers of a fitted pipeline of any kind: a module's parameters, and every
    floating-point array a fitted scikit-learn step holds (its trailing-underscore attributes:
    coefficients, support vectors, scaler means), found through the object's attributes,
    lists and dicts. Hand-crafted feature steps learn nothing and count 0."""
    seen: set[int] = set()

    def count(value: Any, fitted_name: bool, depth: int) -> int:
        if id(value) in seen or depth > 6:
            return 0
        seen.add(id(value))
        if isinstance(value, nn.Module):
            return sum(p.numel() for p in value.parameters())
        if isinstance(value, np.ndarray):
            return value.size if fitted_name and np.issubdtype(value.dtype, np.floating) else 0
        if isinstance(value, np.floating):  # a fitted scalar, e.g. a single-target Ridge's intercept_
            return 1 if fitted_name else 0
        if isinstance(value, torch.Tensor):
            return value.numel() if fitted_name and value.is_floating_point() else 0
        if isinstance(value, (list, tuple)):
            return sum(count(v, fitted_name, depth + 1) for v in value)
        if isinstance(value, dict):
            return sum(count(v, fitted_name, depth + 1) for v in value.values())
        if isinstance(value, (type, types.FunctionType, types.MethodType, types.ModuleType)) \
                or not hasattr(value, "__dict__"):
            return 0
        return sum(count(v, _fitted(name, value), depth + 1) for name, v in vars(value).items())

    return count(pipeline, True, 0)


def _fitted(name: str, owner: Any) -> bool:
    """scikit-learn marks learned attributes with a trailing underscore (its `n_*_` are counts,
    not learned); in other objects any attribute may hold learned numbers."""
    if is_scikit_learn(owner):
        return name.endswith("_") and not name.startswith(("_", "n_"))
    return True


def nested_subsets(targets: Any, budgets: list[float], seed: int) -> dict[float, list[int]]:
    """For each budget (a fraction of the training set) the indices of its items: nested (each
    budget's items include every smaller budget's), stratified when the targets are classes
    (every prefix of the order holds the classes in their proportions), drawn with `seed`."""
    n = size_of(targets)
    generator = np.random.default_rng(seed)
    labels = np.asarray(to_numpy(targets)) if is_classes(targets) else None
    if labels is None:
        order = generator.permutation(n)
    else:
        # Spread each class evenly over [0, 1): the i-th of a class's n_c items sits at
        # (i + u) / n_c, so sorting all items by position takes classes in proportion.
        position = np.empty(n)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            members = members[generator.permutation(len(members))]
            position[members] = (np.arange(len(members)) + generator.random(len(members))) / len(members)
        order = np.argsort(position, kind="stable")
    return {budget: sorted(order[:max(1, math.ceil(budget * n))].tolist()) for budget in budgets}
