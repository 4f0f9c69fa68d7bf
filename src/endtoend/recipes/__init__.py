"""Recipes: one module per case study, all on one contract (docs/recipes.md).

    NAME, DESCRIPTION, METRIC, HIGHER_IS_BETTER
    load_data(small)            -> endtoend.data.Splits: train, val, test, each (inputs, targets)
    staged_pipelines(seed[, small]) -> {name: object with fit(inputs, targets) and predict(inputs)}
    build_model(small)          -> the end-to-end nn.Module (raw input -> output)
    training(small)             -> keyword arguments of endtoend.fit
  optional:
    predict(model, inputs)      -> predictions of the staged pipelines' form (default: argmax for
                                   class targets, else the raw output)
    evaluate(predictions, targets) -> {metric: value} over a whole split (default: accuracy)
    read_input(path), format_prediction(prediction, output)   for `e2e predict`
    save_prediction(prediction, path) -> the file it wrote     `e2e predict` without --json
    variants(small)             -> {name: (model factory, fit settings)}: more end-to-end rows
    report_figure(inputs, targets, predictions[, runs])       test predictions drawn in report.html
    report_animation(inputs, targets, predictions) -> {title: uint8 (T, H, W, 3)}   GIFs in report.html
    variant_data(variant, train, small) -> the training pair a variant trains on (an ablation)
    aggregate(model, train, round, small) -> the next training pair   with settings' rounds: N (DAgger)
    OPTIONS = {name: (default, help)}   the recipe's own command-line options, given to load_data
    FIT_TEST = False            the test split is not model inputs (drive's tracks): fit skips it
    TIMING_ITEMS = n            latency and throughput timed on the first n test items only
    BUDGETS = (0.05, 0.2, 1.0)  the label budgets `e2e compare` trains at when --budgets is not given
    build_pipeline(small), regime_training(small)             for `e2e compare --regimes`

A recipe is a built-in name (`RECIPES`) or the path of the user's own .py file. The contract is
checked in endtoend.recipes.contract; endtoend.recipes.run trains and compares any recipe and
holds nothing specific to one.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from endtoend.errors import UsageError
from endtoend.recipes.contract import check_recipe
from endtoend.userfile import import_file

RECIPES = {
    "digits": "endtoend.recipes.digits",
    "mnist5k": "endtoend.recipes.mnist5k",
    "segment": "endtoend.recipes.segment",
    "detect": "endtoend.recipes.detect",
    "drive": "endtoend.recipes.drive",
    "translate": "endtoend.recipes.translate",
    "speech": "endtoend.recipes.speech",
    "represent": "endtoend.recipes.represent",
    "multitask": "endtoend.recipes.multitask",
    "transfer": "endtoend.recipes.transfer",
}

__all__ = ["RECIPES", "get_recipe", "recipe_source"]


def get_recipe(name: str) -> ModuleType:
    """A built-in recipe by name, or the user's recipe file by path (`path/to/my_recipe.py`),
    imported and checked against the contract. Raises UsageError (one line)."""
    if name.endswith(".py"):
        return check_recipe(import_file(name, "recipe file"), f"recipe file {name}")
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))} "
                         "(see `e2e recipes`), or the path of your own recipe file, PATH.py")
    return check_recipe(importlib.import_module(RECIPES[name]), f"recipe {name}")


def recipe_source(recipe: ModuleType) -> str:
    """What `get_recipe` needs to load `recipe` again (from a run directory's config.json):
    its built-in name, or its file's absolute path."""
    for name, module in RECIPES.items():
        if recipe.__name__ == module:
            return name
    return str(getattr(recipe, "__file__", None) or recipe.NAME)
