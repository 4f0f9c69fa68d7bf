"""get_recipe: built-in names, the user's own recipe files by path, and the built-in recipes'
pipelines (build_pipeline is build_model cut in stages). The contract's rules: test_contract.py."""

import sys
from pathlib import Path

import pytest
import torch

from endtoend.errors import UsageError
from endtoend.recipes import get_recipe

STUB = str(Path(__file__).parent / "stub_recipe.py")


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_recipe_file_is_imported_by_path_with_its_names():
    recipe = get_recipe(STUB)
    assert recipe.NAME == "stub" and recipe.METRIC == "accuracy" and recipe.HIGHER_IS_BETTER is True
    data = recipe.load_data()
    assert data.train[0].shape == (200, 4) and data.test[0].shape == (50, 4)
    assert recipe.build_model()(data.test[0]).shape == (50, 2)


def test_a_recipe_file_may_import_its_siblings_and_define_dataclasses(tmp_path):
    (tmp_path / "helpers.py").write_text("WIDTH = 3\n")
    body = Path(STUB).read_text().replace('NAME = "stub"', 'NAME = "sibling"')
    (tmp_path / "mine.py").write_text(
        "from __future__ import annotations\nfrom dataclasses import dataclass\nfrom helpers import WIDTH\n"
        + body
        + "\n@dataclass\nclass Settings:\n    width: int = WIDTH\n")
    recipe = get_recipe(str(tmp_path / "mine.py"))
    assert recipe.NAME == "sibling" and recipe.Settings().width == 3
    assert str(tmp_path) not in sys.path  # its folder was importable only while it ran


@pytest.mark.parametrize("text, expected", [("def broken(:\n", "could not import recipe file {path}: SyntaxError"),
                                            ("raise RuntimeError('no data here')\n",
                                             "could not import recipe file {path}: RuntimeError: no data here")])
def test_a_recipe_file_that_fails_to_import_is_one_line(tmp_path, text, expected):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(UsageError) as error:
        get_recipe(str(path))
    assert str(error.value).startswith(expected.format(path=path)) and "\n" not in str(error.value)


def test_unknown_names_and_missing_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"no such recipe file: .*nowhere\.py"):
        get_recipe(str(tmp_path / "nowhere.py"))
    with pytest.raises(UsageError, match="known recipes: detect, digits, drive, mnist5k, multitask, represent, "
                                         "segment, speech, transfer, translate "):
        get_recipe("cifar")


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_recipe_pipelines_are_the_recipe_model_in_stages(name):
    """build_pipeline slices build_model: the same layers and the same initial weights for a
    seed (the decoder is drawn after the CNN), stage parameters numbered from 0, and the
    same function of the input."""
    recipe = get_recipe(name)
    torch.manual_seed(0)
    model = recipe.build_model(small=True)
    torch.manual_seed(0)
    pipe = recipe.build_pipeline(small=True)
    weights, staged_weights = state(model), state(pipe)
    assert len(weights) == len(staged_weights)
    assert all(torch.equal(a, b) for a, b in zip(weights.values(), staged_weights.values()))
    assert any(key.startswith("classifier.0.") for key in staged_weights)  # as before the slicing
    images = recipe.load_data(small=True).test[0][:4]
    model.eval(), pipe.eval()
    assert torch.equal(model(images), pipe(images))
    head = pipe.objectives["features"].head
    assert head(pipe.features(images)).shape == images.shape  # the decoder reconstructs the input
    budget = recipe.regime_training(small=True)
    assert set(budget.stage_epochs) == set(pipe.stage_names) and "epochs" not in budget.fit
