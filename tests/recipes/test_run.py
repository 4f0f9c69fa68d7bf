"""Recipe orchestration (endtoend.recipes.run), on the stub recipe: regimes side by side, the
regime checks, lr_find on a recipe's settings, and fresh output folders."""

import json
import types
from pathlib import Path

import pytest

import endtoend.recipes.run as run_module
from endtoend.errors import UsageError
from endtoend.recipes import get_recipe
from endtoend.recipes.run import check_regimes, compare_recipe, compare_regimes, lr_find_recipe
from toys import is_accuracy_over

STUB = get_recipe(str(Path(__file__).parent / "stub_recipe.py"))


def test_compare_regimes_scores_each_regime_like_any_row_and_writes_the_run_directories(tmp_path):
    lines = []
    cells = compare_regimes(STUB, STUB.load_data(), ["staged", "staged+joint", "joint"], out=tmp_path,
                            progress=False, log=lines.append)
    assert list(cells) == ["regime: staged", "regime: staged+joint", "regime: joint"]
    for cell in cells.values():
        assert is_accuracy_over(len(STUB.load_data().test[1]), cell.scores["accuracy"]) and cell.seconds > 0
        assert cell.measures["parameters"] == 4 * 8 + 8 + 8 * 2 + 2  # the autoencoder head is not counted
        assert set(cell.extra["probes"]) == {"features", "classifier"}
    for folder in ("staged/stage-1-features", "staged/stage-2-classifier", "staged+joint/finetune", "joint/joint"):
        assert (tmp_path / folder / "summary.json").exists()
    summary = json.loads((tmp_path / "joint" / "joint" / "summary.json").read_text())
    # the recipe's evaluate (accuracy of the argmax) agrees with fit's own test accuracy
    assert summary["metrics"]["test_accuracy"] == pytest.approx(cells["regime: joint"].scores["accuracy"], abs=1e-6)
    assert lines[0] == "training the pipeline under regime staged ..." and len(lines) == 6


def test_check_regimes_keeps_the_order_drops_repeats_and_names_the_bad_one():
    assert check_regimes(STUB, ["joint", "staged", "joint"]) == ["joint", "staged"]
    with pytest.raises(UsageError, match=r"^unknown regime 'end-to-end'; the regimes are staged, staged\+joint, joint"):
        check_regimes(STUB, ["staged", "end-to-end"])
    with pytest.raises(UsageError, match="^no regime given"):
        check_regimes(STUB, [])
    no_pipeline = types.SimpleNamespace(NAME="flat", regime_training=STUB.regime_training)
    with pytest.raises(UsageError, match=r"recipe 'flat' has no build_pipeline\(\)"):
        check_regimes(no_pipeline, ["joint"])


def test_compare_recipe_checks_its_regimes_and_its_folder_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "_train_staged", lambda *args, **kwargs: pytest.fail("trained despite bad input"))
    with pytest.raises(UsageError, match="unknown regime 'greedy'"):
        compare_recipe(STUB, tmp_path / "new", regimes=["greedy"], log=lambda line: None)
    assert not (tmp_path / "new").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "a.txt").write_text("mine")
    with pytest.raises(UsageError, match="compare cannot resume, so choose another --out") as error:
        compare_recipe(STUB, tmp_path / "used", log=lambda line: None)
    assert "--resume" not in str(error.value)
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["a.txt"]


def test_lr_find_recipe_uses_the_recipes_settings(tmp_path, monkeypatch):
    seen = {}

    def fake_lr_find(model, train, **kwargs):
        seen.update(kwargs, rows=len(train[0]), model=model)
        return "result"
    monkeypatch.setattr(run_module, "lr_find", fake_lr_find)
    digits = get_recipe("digits")
    assert lr_find_recipe(digits, tmp_path / "lr", seed=3, small=True, steps=50) == "result"
    assert seen["batch_size"] == 32 and seen["seed"] == 3 and seen["rows"] == 512 and seen["steps"] == 50
    assert seen["weight_decay"] == 5e-4 and seen["transforms"] is not None and seen["out"] == tmp_path / "lr"
    assert "lr" not in seen and "epochs" not in seen  # what the sweep sets itself, or does not use
    with pytest.raises(UsageError, match="lr-find cannot resume"):
        (tmp_path / "lr" / "lr_find.json").write_text("{}")
        lr_find_recipe(digits, tmp_path / "lr", small=True)


def with_variants(variants) -> types.ModuleType:
    """The stub recipe with a `variants` function returning `variants`."""
    recipe = types.ModuleType("stub_with_variants")
    recipe.__dict__.update({k: v for k, v in vars(STUB).items() if not k.startswith("__")})
    recipe.variants = lambda small=False: variants
    return recipe


def test_each_variant_is_a_row_of_its_own_and_predict_rebuilds_it_from_its_run_directory(tmp_path, monkeypatch):
    from torch import nn

    from endtoend.recipes.predict import load_trained

    wide = lambda: nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))  # noqa: E731
    recipe = with_variants({"wide MLP": (wide, dict(STUB.training(), epochs=2))})
    comparison = compare_recipe(recipe, tmp_path / "out", progress=False, log=lambda line: None)
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert set(rows) == {"logistic regression", "end-to-end", "end-to-end: wide MLP"}
    assert rows["end-to-end: wide MLP"]["kind"] == "end-to-end"
    assert rows["end-to-end: wide MLP"]["parameters"] == 4 * 32 + 32 + 32 * 2 + 2
    assert rows["end-to-end"]["parameters"] == 4 * 8 + 8 + 8 * 2 + 2
    folder = tmp_path / "out" / "end-to-end-wide-mlp" / "seed-0"
    config = json.loads((folder / "config.json").read_text())
    assert config["variant"] == "wide MLP" and config["epochs"] == 2
    # load_trained rebuilds the variant's model, not build_model's: its weights fit only that one
    monkeypatch.setattr("endtoend.recipes.get_recipe", lambda name: recipe)
    _, model, _ = load_trained(folder)
    assert model[0].out_features == 32


@pytest.mark.parametrize("variants, problem", [
    ([1], r"must return \{name: \(model factory, fit settings\)\}, got list"),
    ({"": (lambda: None, {})}, "variant names must be non-empty strings"),
    ({"x": (lambda: None,)}, "variant 'x' must be a pair"),
    ({"x": (lambda: None, {"seed": 1})}, r"variants\(\)\['x'\] sets seed"),
])
def test_a_bad_variants_is_one_line_before_anything_trains(tmp_path, variants, problem):
    with pytest.raises(UsageError, match=problem):
        compare_recipe(with_variants(variants), tmp_path / "out", progress=False, log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_train_recipe_refuses_an_unknown_variant_naming_the_known_ones(tmp_path):
    from torch import nn

    recipe = with_variants({"wide": (lambda: nn.Linear(4, 2), STUB.training())})
    with pytest.raises(UsageError, match="has no variant 'narrow'; its variants: 'wide'"):
        run_module.train_recipe(recipe, tmp_path / "run", variant="narrow", progress=False)
