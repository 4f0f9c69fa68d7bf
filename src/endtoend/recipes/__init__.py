"""Recipes: one module per case study, each with the same four parts.

    load_data(small)          -> endtoend.data.Splits (tensors; the test split is fixed)
    staged_pipelines(seed)    -> {name: sklearn estimator}, the traditional staged pipelines
    build_model(small)        -> the end-to-end nn.Module (raw input -> output)
    training(small)           -> keyword arguments for endtoend.fit (epochs, loss, metrics, ...)

plus NAME, DESCRIPTION, METRIC and HIGHER_IS_BETTER. `endtoend.recipes.run` trains and
compares them; nothing recipe-specific lives outside the recipe's module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from endtoend.errors import UsageError

RECIPES = {
    "digits": "endtoend.recipes.digits",
    "mnist5k": "endtoend.recipes.mnist5k",
}


def get_recipe(name: str) -> ModuleType:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))} (see `e2e recipes`)")
    return importlib.import_module(RECIPES[name])
