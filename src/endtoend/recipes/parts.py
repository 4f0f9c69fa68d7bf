"""The recipe's parts, called and checked where the commands need them: each returns what
the contract promises (docs/recipes.md) or raises UsageError with one line naming the part.

    recipe_options     OPTIONS with the command line's values, typed
    recipe_data        load_data's Splits (with the options)
    recipe_training    training()'s fit settings, without those the commands set
    recipe_variants    variants(): the other end-to-end models
    end_to_end_model   (factory, settings) of the main model or a variant
    recipe_staged_pipelines   staged_pipelines(seed[, small])
    variant_data, rounds, aggregated   a variant's data, and DAgger-style data aggregation

endtoend.recipes.run trains and compares with them.
"""

from __future__ import annotations

import functools
import inspect
from types import ModuleType
from typing import Any, Callable

import torch

from endtoend.data import Splits
from endtoend.errors import UsageError
from endtoend.recipes.contract import SEE, size_of
from endtoend.recipes.matrix import END_TO_END

def recipe_options(recipe: ModuleType, given: dict[str, Any]) -> dict[str, Any]:
    """The recipe's OPTIONS ({name: (default, help)}) with the `given` values (strings from the
    command line, or values) converted to each default's type; an unknown name or a value of
    the wrong type is one line naming the recipe's options. {} for a recipe without OPTIONS."""
    declared = getattr(recipe, "OPTIONS", {}) or {}
    known = ", ".join(f"--{name.replace('_', '-')}" for name in declared) or "none"
    options = {}
    for name, value in given.items():
        key = name.lstrip("-").replace("-", "_")
        if key not in declared:
            raise UsageError(f"recipe {recipe.NAME!r} has no option --{key.replace('_', '-')}; its options: {known}")
        kind = type(declared[key][0])
        try:
            options[key] = kind(value) if not isinstance(value, kind) else value
        except (TypeError, ValueError):
            kinds = {int: "an integer", float: "a number", str: "a string"}
            raise UsageError(f"--{key.replace('_', '-')} of recipe {recipe.NAME!r} takes {kinds[kind]} "
                             f"(default {declared[key][0]!r}), got {value!r}") from None
    return {name: options.get(name, default) for name, (default, _) in declared.items()}


def recipe_data(recipe: ModuleType, small: bool, options: dict[str, Any] | None = None) -> Splits:
    """load_data's Splits: train, val and test, each a pair (inputs, targets) of equal length.
    A recipe with OPTIONS gets them as keyword arguments (the defaults when none are given)."""
    data = recipe.load_data(small, **recipe_options(recipe, options or {})) if getattr(recipe, "OPTIONS", None) \
        else recipe.load_data(small)
    if not all(hasattr(data, split) for split in ("train", "val", "test")):
        raise UsageError(f"recipe {recipe.NAME!r}: load_data() must return endtoend.data.Splits(train=, val=, "
                         f"test=), got {type(data).__name__} ({SEE})")
    for split in ("train", "val", "test"):
        pair = getattr(data, split)
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise UsageError(f"recipe {recipe.NAME!r}: load_data().{split} must be a pair (inputs, targets), got "
                             f"{type(pair).__name__} ({SEE})")
        inputs, targets = size_of(pair[0]), size_of(pair[1])
        if inputs != targets or inputs == 0:
            raise UsageError(f"recipe {recipe.NAME!r}: load_data().{split} has {inputs} inputs and {targets} targets; "
                             f"a split needs one target per input, and at least one ({SEE})")
    return data


SET_BY_COMPARE = ("val", "test", "out", "seed", "resume", "checkpoint_every", "progress", "config")


def recipe_training(recipe: ModuleType, small: bool) -> dict[str, Any]:
    """training()'s fit arguments, without the ones the commands set themselves."""
    settings = recipe.training(small)
    if not isinstance(settings, dict):
        raise UsageError(f"recipe {recipe.NAME!r}: training() must return a dict of endtoend.fit arguments, "
                         f"got {type(settings).__name__} ({SEE})")
    check_settings(recipe, settings, "training()")
    return dict(settings)


def check_settings(recipe: ModuleType, settings: dict[str, Any], where: str) -> None:
    taken = [key for key in SET_BY_COMPARE if key in settings]
    if taken:
        raise UsageError(f"recipe {recipe.NAME!r}: {where} sets {', '.join(taken)}, which the commands set "
                         f"themselves (the data from load_data, --seed, --out, ...); remove {'it' if len(taken) == 1 else 'them'} "
                         f"({SEE})")
    return dict(settings)


def recipe_variants(recipe: ModuleType, small: bool) -> dict[str, tuple[Callable[[], torch.nn.Module], dict]]:
    """variants()'s {name: (model factory, fit settings)}: the recipe's other end-to-end models,
    each a row of its own ("end-to-end: NAME"); {} for a recipe without variants."""
    if not callable(getattr(recipe, "variants", None)):
        return {}
    found = recipe.variants(small)
    if not isinstance(found, dict):
        raise UsageError(f"recipe {recipe.NAME!r}: variants() must return {{name: (model factory, fit settings)}}, "
                         f"got {type(found).__name__} ({SEE})")
    for name, value in found.items():
        if not isinstance(name, str) or not name.strip():
            raise UsageError(f"recipe {recipe.NAME!r}: variant names must be non-empty strings, got {name!r} ({SEE})")
        if not (isinstance(value, tuple) and len(value) == 2 and callable(value[0]) and isinstance(value[1], dict)):
            raise UsageError(f"recipe {recipe.NAME!r}: variant {name!r} must be a pair (a function that builds the "
                             f"model, a dict of fit settings), got {type(value).__name__} ({SEE})")
        check_settings(recipe, value[1], f"variants()[{name!r}]")
    return found


def end_to_end_model(recipe: ModuleType, small: bool,
                     variant: str | None = None) -> tuple[Callable[[], torch.nn.Module], dict[str, Any]]:
    """(model factory, fit settings) of the recipe's end-to-end model, or of one of its variants."""
    if variant is None:
        return functools.partial(recipe.build_model, small), recipe_training(recipe, small)
    found = recipe_variants(recipe, small)
    if variant not in found:
        known = ", ".join(repr(name) for name in found) or "none"
        raise UsageError(f"recipe {recipe.NAME!r} has no variant {variant!r}; its variants: {known}")
    build, settings = found[variant]
    return build, dict(settings)


def run_folder(variant: str | None) -> str:
    """end-to-end, or end-to-end-<the variant's slug>."""
    return END_TO_END if variant is None else f"{END_TO_END}-{slug(variant)}"


def slug(text: str) -> str:
    """Lower case, words joined by dashes: "end-to-end: DAgger" -> "end-to-end-dagger"."""
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) or "unnamed"


def recipe_staged_pipelines(recipe: ModuleType, seed: int, small: bool = False) -> dict[str, Any]:
    """staged_pipelines' {name: pipeline}, each with fit() and predict(), named apart from the
    rows compare adds itself; `small` goes to a staged_pipelines(seed, small) that takes it."""
    accepts_small = "small" in inspect.signature(recipe.staged_pipelines).parameters
    pipelines = recipe.staged_pipelines(seed, small=small) if accepts_small else recipe.staged_pipelines(seed)
    if not isinstance(pipelines, dict):
        raise UsageError(f"recipe {recipe.NAME!r}: staged_pipelines() must return {{name: pipeline}}, "
                         f"got {type(pipelines).__name__} ({SEE})")
    for name, pipeline in pipelines.items():
        if not isinstance(name, str) or not name.strip() or name == END_TO_END or name.startswith("regime: "):
            raise UsageError(f"recipe {recipe.NAME!r}: staged pipeline names must be non-empty strings other than "
                             f"{END_TO_END!r} and 'regime: ...', got {name!r} ({SEE})")
        if not (callable(getattr(pipeline, "fit", None)) and callable(getattr(pipeline, "predict", None))):
            raise UsageError(f"recipe {recipe.NAME!r}: staged pipeline {name!r} needs fit(inputs, targets) and "
                             f"predict(inputs) (a scikit-learn estimator qualifies), got {type(pipeline).__name__} "
                             f"({SEE})")
    return pipelines



def variant_data(recipe: ModuleType, variant: str | None, train: tuple, small: bool) -> tuple:
    """The training pair of a variant: the recipe's `variant_data(variant, train, small)` when it
    has one (an ablation that trains on less, e.g. drive's BC without the shifted views), else
    the training split itself."""
    if variant is None or not callable(getattr(recipe, "variant_data", None)):
        return train
    pair = recipe.variant_data(variant, train, small)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and size_of(pair[0]) == size_of(pair[1]) > 0):
        raise UsageError(f"recipe {recipe.NAME!r}: variant_data() must return a training pair (inputs, targets) "
                         f"of equal, non-zero length ({SEE})")
    return tuple(pair)


def rounds_of(recipe: ModuleType, settings: dict[str, Any]) -> int:
    """The `rounds` of data aggregation that fit settings ask for (taken out of them), checked."""
    rounds = settings.pop("rounds", 0)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
        raise UsageError(f"recipe {recipe.NAME!r}: rounds must be a non-negative integer, got {rounds!r} ({SEE})")
    if rounds and not callable(getattr(recipe, "aggregate", None)):
        raise UsageError(f"recipe {recipe.NAME!r}: rounds = {rounds} needs an aggregate(model, train, round, small) "
                         f"that returns the next round's training pair ({SEE})")
    return rounds


def aggregated(recipe: ModuleType, model: torch.nn.Module, train: tuple, round: int, small: bool) -> tuple:
    from endtoend.train.evaluate import eval_mode

    with eval_mode(model), torch.inference_mode():
        pair = recipe.aggregate(model, train, round, small)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and size_of(pair[0]) == size_of(pair[1]) > 0):
        raise UsageError(f"recipe {recipe.NAME!r}: aggregate() must return the next training pair (inputs, targets) "
                         f"of equal, non-zero length ({SEE})")
    return tuple(pair)
