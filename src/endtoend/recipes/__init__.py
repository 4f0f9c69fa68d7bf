"""Recipes: one module per case study, each with the same four parts.

    load_data(small)          -> endtoend.data.Splits (tensors; the test split is fixed)
    staged_pipelines(seed)    -> {name: sklearn estimator}, the traditional staged pipelines
    build_model(small)        -> the end-to-end nn.Module (raw input -> output)
    training(small)           -> keyword arguments for endtoend.fit (epochs, loss, metrics, ...)

plus NAME, DESCRIPTION, METRIC and HIGHER_IS_BETTER; optionally build_pipeline(small) and
regime_training(small) for `e2e compare --regimes`. A recipe is a built-in name (`RECIPES`) or
the path of the user's own .py file defining the same names. `endtoend.recipes.run` trains and
compares them; nothing recipe-specific lives outside the recipe's module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from endtoend.errors import UsageError
from endtoend.userfile import import_file

RECIPES = {
    "digits": "endtoend.recipes.digits",
    "mnist5k": "endtoend.recipes.mnist5k",
}
CONSTANTS = ("NAME", "DESCRIPTION", "METRIC", "HIGHER_IS_BETTER")
FUNCTIONS = ("load_data", "staged_pipelines", "build_model", "training")


def get_recipe(name: str) -> ModuleType:
    """A built-in recipe by name, or the user's recipe file by path (`path/to/my_recipe.py`),
    imported and checked for the names of the contract. Raises UsageError (one line)."""
    if name.endswith(".py"):
        return _load_recipe_file(name)
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))} "
                         "(see `e2e recipes`), or the path of your own recipe file, PATH.py")
    return importlib.import_module(RECIPES[name])


def _load_recipe_file(path: str) -> ModuleType:
    module = import_file(path, "recipe file")
    missing = [name for name in CONSTANTS + FUNCTIONS if not hasattr(module, name)]
    not_callable = [name for name in FUNCTIONS if hasattr(module, name) and not callable(getattr(module, name))]
    if missing or not_callable:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                   ([f"{', '.join(not_callable)} must be functions"] if not_callable else [])
        raise UsageError(f"recipe file {path} {'; '.join(problems)}: a recipe defines "
                         f"{', '.join(CONSTANTS + FUNCTIONS)} (see endtoend.recipes)")
    return module
