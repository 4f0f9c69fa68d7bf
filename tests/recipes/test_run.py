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


# --- data aggregation rounds (DAgger), the recipe's own options, closed-loop test splits ---------

def with_rounds(rounds: int, aggregate=None, **constants):
    """The stub recipe with a variant trained in `rounds` rounds of data aggregation."""
    recipe = types.ModuleType("stub_with_rounds")
    recipe.__dict__.update({k: v for k, v in vars(STUB).items() if not k.startswith("__")})
    recipe.variants = lambda small=False: {"aggregated": (lambda: STUB.build_model(), dict(STUB.training(), epochs=1,
                                                                                       rounds=rounds))}
    if aggregate is not None:
        recipe.aggregate = aggregate
    recipe.__dict__.update(constants)
    return recipe


def test_rounds_train_on_what_aggregate_returns_going_on_from_the_weights_reached(tmp_path):
    import torch
    from safetensors.torch import load_file

    seen = []

    def aggregate(model, train, round, small):
        inputs, targets = train
        seen.append((round, len(targets), {k: v.clone() for k, v in model.state_dict().items()}, model.training))
        return torch.cat([inputs, inputs[:10]]), torch.cat([targets, targets[:10]])

    recipe = with_rounds(2, aggregate)
    run = run_module.train_recipe(recipe, tmp_path / "run", variant="aggregated", progress=False, log=lambda line: None)
    n = len(STUB.load_data().train[1])
    assert [(round, size) for round, size, _, _ in seen] == [(0, n), (1, n + 10)]
    assert not any(training for *_, training in seen)  # aggregate drives the model in eval mode
    for round in (0, 1):  # each round hands its final weights to aggregate, and the next round starts there
        folder = tmp_path / f"run-round-{round}"
        saved = load_file(str(folder / "model.safetensors"))
        assert all(torch.equal(saved[k], seen[round][2][k]) for k in saved)
        assert json.loads((folder / "config.json").read_text())["round"] == round
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["round"] == 2 and config["rounds"] == 2
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history  # the final round is an ordinary run directory
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("run-round-0", "run-round-1")]
    assert run.seconds >= sum(s.get("seconds", 0) for s in summaries)


def test_rounds_without_aggregate_or_of_a_bad_count_are_one_line(tmp_path):
    with pytest.raises(UsageError, match=r"rounds = 2 needs an aggregate\(model, train, round, small\)"):
        run_module.train_recipe(with_rounds(2), tmp_path / "a", variant="aggregated", progress=False)
    with pytest.raises(UsageError, match="rounds must be a non-negative integer, got 1.5"):
        run_module.train_recipe(with_rounds(1.5, lambda *a: None), tmp_path / "b", variant="aggregated",
                                progress=False)
    bad = with_rounds(1, lambda model, train, round, small: "more data")
    with pytest.raises(UsageError, match=r"aggregate\(\) must return the next training pair"):
        run_module.train_recipe(bad, tmp_path / "c", variant="aggregated", progress=False, log=lambda line: None)


def test_recipe_options_take_the_defaults_convert_strings_and_name_the_known_ones():
    recipe = with_rounds(0, OPTIONS={"eval_seed": (1000, "first track"), "scale": (0.5, "a factor")})
    assert run_module.recipe_options(recipe, {}) == {"eval_seed": 1000, "scale": 0.5}
    assert run_module.recipe_options(recipe, {"eval-seed": "777", "scale": "2"}) == {"eval_seed": 777, "scale": 2.0}
    with pytest.raises(UsageError, match="^recipe 'stub' has no option --tracks; its options: --eval-seed, --scale$"):
        run_module.recipe_options(recipe, {"tracks": "3"})
    with pytest.raises(UsageError, match=r"^--eval-seed of recipe 'stub' takes an integer \(default 1000\), got 'x'$"):
        run_module.recipe_options(recipe, {"eval-seed": "x"})
    with pytest.raises(UsageError, match="has no option --eval-seed; its options: none"):
        run_module.recipe_options(STUB, {"eval-seed": "1"})


def test_load_data_gets_the_options_and_compare_records_them(tmp_path):
    got = []

    def load_data(small=False, shift=0):
        got.append(shift)
        return STUB.load_data(small)

    recipe = with_rounds(0, OPTIONS={"shift": (0, "an option")}, load_data=load_data)
    recipe.variants = lambda small=False: {}
    comparison = compare_recipe(recipe, tmp_path / "out", progress=False, options={"shift": "3"}, log=lambda l: None)
    assert got == [3] and comparison["options"] == {"shift": 3}
    assert json.loads((tmp_path / "out" / "end-to-end" / "seed-0" / "config.json").read_text())["options"] == {"shift": 3}


def test_fit_test_false_keeps_the_test_split_from_fit_and_timing_items_limits_the_timed_inputs(tmp_path):
    calls = []

    class Counting:
        def fit(self, inputs, targets):
            self.label = int(targets[0])

        def predict(self, inputs):
            calls.append(len(inputs))
            return [self.label] * len(inputs)

    recipe = with_rounds(0, FIT_TEST=False, TIMING_ITEMS=3)
    recipe.variants = lambda small=False: {}
    recipe.staged_pipelines = lambda seed=0: {"constant": Counting()}
    compare_recipe(recipe, tmp_path / "out", progress=False, log=lambda line: None)
    test_size = len(STUB.load_data().test[1])
    assert calls[0] == test_size and max(calls[1:]) == 3  # scored on all, timed on three
    summary = json.loads((tmp_path / "out" / "end-to-end" / "seed-0" / "summary.json").read_text())
    assert not any(name.startswith("test_") for name in summary["metrics"])


def test_report_animation_becomes_gifs_beside_the_report_and_a_broken_one_is_one_line(tmp_path):
    import imageio.v3 as imageio
    import numpy as np

    recipe = with_rounds(0)
    recipe.variants = lambda small=False: {}
    recipe.report_animation = lambda inputs, targets, predictions: {
        name: (np.arange(4)[:, None, None, None] * 50 + 20 * i + np.zeros((4, 8, 10, 3))).astype(np.uint8)
        for i, name in enumerate(predictions)}
    comparison = compare_recipe(recipe, tmp_path / "out", progress=False, log=lambda line: None)
    assert comparison["animations"] == {"logistic regression": "animation-logistic-regression.gif",
                                        "end-to-end": "animation-end-to-end.gif"}
    frames = imageio.imread(tmp_path / "out" / "animation-logistic-regression.gif", index=None)
    assert frames.shape[:3] == (4, 8, 10)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<img src='animation-logistic-regression.gif'>" in page and "<h2>Animations</h2>" in page
    lines = []
    recipe.report_animation = lambda inputs, targets, predictions: {"x": np.zeros((2, 3))}
    comparison = compare_recipe(recipe, tmp_path / "again", progress=False, log=lines.append)
    assert "animations" not in comparison
    assert lines[-1].startswith("report_animation() failed, so report.html has no animations: ")


def test_resuming_a_run_in_rounds_finds_every_finished_round_and_changes_nothing(tmp_path):
    import torch

    def aggregate(model, train, round, small):
        inputs, targets = train
        return torch.cat([inputs, inputs[:10]]), torch.cat([targets, targets[:10]])

    recipe = with_rounds(1, aggregate)
    first = run_module.train_recipe(recipe, tmp_path / "run", variant="aggregated", progress=False, log=lambda l: None)
    written = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}
    again = run_module.train_recipe(recipe, tmp_path / "run", variant="aggregated", progress=False, resume=True,
                                    log=lambda line: None)
    state = first.model.state_dict()
    assert all(torch.equal(state[k], again.model.state_dict()[k]) for k in state)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")} == written
