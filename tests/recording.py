"""A small compare that records what every row was trained on (importable from any test:
pytest's pythonpath holds tests/): the recipes with label budgets check that every row got the
same, nested, stratified items."""

import pytest

from endtoend.recipes.run import compare_recipe


def compare_recording(recipe, out):
    """(comparison, [every training pair, in order]) of compare_recipe(recipe, out, small=True):
    the end-to-end trainings' (inputs, targets) and the staged pipelines' alike."""
    from endtoend.recipes import run

    seen = []
    fit, fit_staged = run.fit, run.fit_staged

    def recording_fit(model, train, **settings):
        seen.append(train)
        return fit(model, train, **settings)

    def recording_fit_staged(pipeline, inputs, targets):
        seen.append((inputs, targets))
        return fit_staged(pipeline, inputs, targets)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "fit", recording_fit)
        patch.setattr(run, "fit_staged", recording_fit_staged)
        comparison = compare_recipe(recipe, out, small=True, progress=False, log=lambda line: None)
    return comparison, seen
