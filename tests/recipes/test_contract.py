"""The recipe contract (docs/recipes.md): each rule, each bad-recipe error, and the pieces that
call every pipeline the same way (conversions, predictions, subsets, sizes, the crossover)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from torch import nn

from endtoend.errors import UsageError
from endtoend.recipes import get_recipe
from endtoend.recipes.contract import (ModelPredictor, count_parameters, fit_staged, is_classes, join,
                                       nested_subsets, predict_staged, score)
from endtoend.recipes.matrix import crossover, gallery
from endtoend.recipes.run import _epochs_for, compare_recipe

STUB = Path(__file__).parent / "stub_recipe.py"


def recipe_file(tmp_path, old=None, new="", extra=""):
    body = STUB.read_text()
    if old is not None:
        assert old in body, old
        body = body.replace(old, new, 1)
    path = tmp_path / "mine.py"
    path.write_text(body + extra)
    return str(path)


# --- the names a recipe defines ---------------------------------------------------------------

@pytest.mark.parametrize("old, new, expected", [
    ('NAME = "stub"\n', "", "lacks NAME: a recipe defines NAME, DESCRIPTION, METRIC, HIGHER_IS_BETTER, load_data"),
    ("def training(", "def _training(", "lacks training: a recipe defines"),
    ('NAME = "stub"', "NAME = 3", "NAME must be a non-empty string, got 3"),
    ('METRIC = "accuracy"', 'METRIC = " "', "METRIC must be a non-empty string, got ' '"),
    ("HIGHER_IS_BETTER = True", 'HIGHER_IS_BETTER = "yes"', "HIGHER_IS_BETTER must be a bool, got 'yes'"),
    ("def load_data(", "load_data = 3\ndef _load_data(", "load_data must be a function, got int"),
    ('METRIC = "accuracy"', 'METRIC = "mae"', "METRIC = 'mae' needs an evaluate(predictions, targets)"),
])
def test_a_recipe_missing_a_name_or_holding_a_wrong_kind_is_one_line(tmp_path, old, new, expected):
    path = recipe_file(tmp_path, old, new)
    with pytest.raises(UsageError) as error:
        get_recipe(path)
    message = str(error.value)
    assert expected in message and message.startswith(f"recipe file {path}")
    assert "\n" not in message and message.endswith("(see docs/recipes.md)")


@pytest.mark.parametrize("extra, expected", [
    ("OPTIONS = [('tracks', 3)]", "OPTIONS must be a dict, got [('tracks', 3)]"),
    ("OPTIONS = {'tracks': 3}", "OPTIONS maps option names to (default, help), the default a number or a string; "
                                "got 'tracks': 3"),
    ("OPTIONS = {'my-tracks': (3, 'how many')}", "got 'my-tracks': (3, 'how many')"),
    ("OPTIONS = {'fast': (True, 'a flag')}", "got 'fast': (True, 'a flag')"),
    ("FIT_TEST = 0", "FIT_TEST must be a bool, got 0"),
    ("TIMING_ITEMS = True", "TIMING_ITEMS must be an integer, got True"),
    ("TIMING_ITEMS = -1", "TIMING_ITEMS must be 0 (no timing) or more, got -1"),
    ("aggregate = 3", "aggregate must be a function, got int"),
    ("BUDGETS = [0.1, 1.0]", "BUDGETS must be a tuple, got [0.1, 1.0]"),
    ("BUDGETS = (0.1, 2)", "BUDGETS must be a tuple of fractions of the training set in (0, 1], such as "
                           "(0.05, 0.2, 1.0), got (0.1, 2)"),
    ("BUDGETS = ()", "got ()"),
])
def test_the_optional_constants_are_checked_when_given(tmp_path, extra, expected):
    path = recipe_file(tmp_path, extra="\n" + extra + "\n")
    with pytest.raises(UsageError) as error:
        get_recipe(path)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_an_optional_part_must_be_a_function_when_given(tmp_path):
    with pytest.raises(UsageError, match=r"predict must be a function, got str \(see docs/recipes.md\)$"):
        get_recipe(recipe_file(tmp_path, extra='\npredict = "argmax"\n'))
    recipe = get_recipe(recipe_file(tmp_path, 'METRIC = "accuracy"', 'METRIC = "mae"',
                                    extra="\ndef evaluate(p, t):\n    return {'mae': 0.0}\n"))
    assert recipe.METRIC == "mae"  # a METRIC other than accuracy is fine with its own evaluate


@pytest.mark.parametrize("old, new, expected", [
    ("    return Splits(train=(x[:200], y[:200]), val=(x[200:250], y[200:250]), test=(x[250:], y[250:]))",
     "    return (x, y)", "load_data() must return endtoend.data.Splits(train=, val=, test=), got tuple"),
    ("val=(x[200:250], y[200:250])", "val=x[200:250]", "load_data().val must be a pair (inputs, targets), got Tensor"),
    ("test=(x[250:], y[250:])", "test=(x[250:], y[251:])", "load_data().test has 50 inputs and 49 targets"),
    ("train=(x[:200], y[:200])", "train=(x[:0], y[:0])", "load_data().train has 0 inputs and 0 targets"),
    ('    return dict(loss="cross_entropy"', '    return None and dict(loss="cross_entropy"',
     "training() must return a dict of endtoend.fit arguments, got NoneType"),
    ('    return dict(loss="cross_entropy"', '    return dict(seed=1, out="x", loss="cross_entropy"',
     "training() sets out, seed, which the commands set themselves"),
    ('    return {"logistic regression": LogisticRegression()}', '    return [LogisticRegression()]',
     "staged_pipelines() must return {name: pipeline}, got list"),
    ('    return {"logistic regression": LogisticRegression()}', '    return {"lr": "LogisticRegression"}',
     "staged pipeline 'lr' needs fit(inputs, targets) and predict(inputs)"),
    ('    return {"logistic regression": LogisticRegression()}', '    return {"end-to-end": LogisticRegression()}',
     "staged pipeline names must be non-empty strings other than 'end-to-end'"),
])
def test_a_wrong_recipe_part_is_one_line_before_anything_is_written(tmp_path, old, new, expected):
    recipe = get_recipe(recipe_file(tmp_path, old, new))
    with pytest.raises(UsageError) as error:
        compare_recipe(recipe, tmp_path / "out", progress=False, log=lambda line: None)
    assert str(error.value).startswith(f"recipe 'stub': {expected}") and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("evaluate, expected", [
    ("return 0.5", "evaluate() must return a dict holding METRIC 'accuracy', got float"),
    ("return {'f1': 0.5}", "evaluate() must return a dict holding METRIC 'accuracy', got keys ['f1']"),
    ("return {'accuracy': 'high'}", "evaluate() must return numbers"),
])
def test_an_evaluate_that_breaks_the_contract_stops_the_comparison(tmp_path, evaluate, expected):
    recipe = get_recipe(recipe_file(tmp_path, extra=f"\ndef evaluate(predictions, targets):\n    {evaluate}\n"))
    with pytest.raises(UsageError, match=re.escape(expected)):
        compare_recipe(recipe, tmp_path / "out", progress=False, log=lambda line: None)


# --- how every pipeline is called --------------------------------------------------------------

class Recorder:
    """A hand-built staged pipeline: records what it was given, predicts class 1."""

    def __init__(self):
        self.seen = []
        self.weights = np.zeros(3)

    def fit(self, inputs, targets):
        self.seen.append((type(inputs), type(targets), len(inputs)))

    def predict(self, inputs):
        self.seen.append((type(inputs), None, len(inputs)))
        return np.ones(len(inputs), dtype=np.int64)


def test_scikit_learn_gets_numpy_and_a_hand_built_pipeline_gets_the_split_as_it_is():
    x, y = torch.randn(20, 3), torch.arange(20) % 2
    hand = Recorder()
    fit_staged(hand, x, y)
    predict_staged(hand, x)
    assert hand.seen == [(torch.Tensor, torch.Tensor, 20), (torch.Tensor, None, 20)]
    seen = []
    sk = make_pipeline(FunctionTransformer(lambda a: seen.append(type(a)) or a), LogisticRegression())
    fit_staged(sk, x, y)
    assert isinstance(predict_staged(sk, x), np.ndarray) and seen == [np.ndarray, np.ndarray]


def test_the_default_predict_is_the_argmax_for_classes_and_the_raw_output_otherwise():
    recipe = get_recipe(str(STUB))
    model = nn.Linear(4, 3)
    x = torch.randn(10, 4)
    labels = ModelPredictor(recipe, model, classes=True, batch_size=3).predict(x)
    assert torch.equal(labels, model(x).argmax(-1)) and labels.device.type == "cpu"
    raw = ModelPredictor(recipe, model, classes=False, batch_size=4).predict(x)
    assert raw.shape == (10, 3) and not raw.requires_grad and torch.allclose(raw, model(x))
    assert model.training  # eval mode only while predicting


def test_a_recipes_own_predict_runs_in_eval_mode_under_inference_mode_chunk_by_chunk(tmp_path):
    recipe = get_recipe(recipe_file(tmp_path, extra=(
        "\ndef predict(model, inputs):\n    assert not model.training and torch.is_inference_mode_enabled()\n"
        "    return [int(v) for v in model(inputs).argmax(-1)]\n")))
    model = nn.Linear(4, 2)
    predictions = ModelPredictor(recipe, model, classes=True, batch_size=4).predict(torch.randn(10, 4))
    assert isinstance(predictions, list) and len(predictions) == 10  # three chunks, lists chained


def test_numpy_inputs_reach_the_model_as_tensors_of_its_dtype():
    recipe = get_recipe(str(STUB))
    model = nn.Linear(4, 3)
    inputs = np.random.default_rng(0).normal(size=(5, 4))  # float64
    labels = ModelPredictor(recipe, model, classes=True).predict(inputs)
    assert torch.equal(labels, model(torch.tensor(inputs, dtype=torch.float32)).argmax(-1))


def test_join_chains_lists_and_concatenates_tensors_and_arrays_and_refuses_the_rest():
    assert join([[1, 2], [3]]) == [1, 2, 3]
    assert join([torch.ones(2), torch.zeros(1)]).tolist() == [1, 1, 0]
    assert join([np.ones(1), np.zeros(2)]).tolist() == [1, 0, 0]
    with pytest.raises(UsageError, match="predict\\(\\) returned a str"):
        join(["ab", "c"])


def test_score_converts_tensors_to_numpy_for_evaluate(tmp_path):
    recipe = get_recipe(recipe_file(tmp_path, extra="\ndef evaluate(p, t):\n    SEEN.append((type(p), type(t)))\n"
                                    "    return {'accuracy': float((p == t).mean()), 'n': len(t)}\nSEEN = []\n"))
    scores = score(recipe, torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1]))
    assert scores == {"accuracy": pytest.approx(2 / 3), "n": 3.0}
    assert recipe.SEEN == [(np.ndarray, np.ndarray)]
    default = get_recipe(str(STUB))
    assert score(default, np.array([1, 2]), torch.tensor([1, 3])) == {"accuracy": 0.5}
    with pytest.raises(UsageError, match="compares predictions and targets of the same shape"):
        score(default, np.zeros((2, 3)), torch.tensor([1, 3]))


def test_is_classes_means_one_integer_label_per_item():
    assert is_classes(torch.tensor([0, 2, 1])) and is_classes(np.array([1, 0]))
    assert not is_classes(torch.tensor([0.5, 1.0])) and not is_classes(torch.zeros(3, 2, dtype=torch.long))
    assert is_classes([0, 1]) and not is_classes([0.5, 1]) and not is_classes([])
    assert not is_classes(torch.tensor([True, False]))


def test_count_parameters_counts_what_was_learned_in_any_kind_of_pipeline():
    x, y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 3
    logistic = LogisticRegression().fit(x, y)
    assert count_parameters(logistic) == 3 * 4 + 3
    scaled = make_pipeline(FunctionTransformer(np.abs), StandardScaler(), LogisticRegression()).fit(x, y)
    assert count_parameters(scaled) == 3 * 4 + 3 + 3 * 4  # scaler mean_, var_, scale_; the feature step 0
    assert count_parameters(nn.Linear(4, 2)) == 10

    class TwoStages:
        def __init__(self):
            self.features = np.abs  # a hand-made stage learns nothing
            self.regressor = Ridge().fit(x, y)
    assert count_parameters(TwoStages()) == 4 + 1


def test_budget_subsets_are_nested_stratified_seeded_and_the_same_for_every_caller():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    subsets = nested_subsets(labels, [0.1, 0.5, 1.0], seed=3)
    assert [len(subsets[b]) for b in (0.1, 0.5, 1.0)] == [10, 50, 100]
    assert set(subsets[0.1]) <= set(subsets[0.5]) <= set(subsets[1.0]) == set(range(100))
    assert np.bincount(labels[subsets[0.1]].numpy()).tolist() == [6, 3, 1]
    assert np.bincount(labels[subsets[0.5]].numpy()).tolist() == [30, 15, 5]
    assert nested_subsets(labels, [0.1], seed=3) == {0.1: subsets[0.1]}
    assert nested_subsets(labels, [0.1], seed=4)[0.1] != subsets[0.1]
    regression = nested_subsets(torch.randn(40), [0.25, 1.0], seed=0)
    assert len(regression[0.25]) == 10 and set(regression[0.25]) <= set(regression[1.0])


def test_a_budget_keeps_the_end_to_end_models_number_of_steps():
    assert _epochs_for({"epochs": 4, "batch_size": 10}, full=100, items=25) == 20  # 40 steps of full batches / 2
    assert _epochs_for({"epochs": 4, "batch_size": 10}, full=100, items=35) == 14  # ceil(40 / 3)
    assert _epochs_for({"epochs": 4, "batch_size": 10}, full=100, items=100) == 4
    assert _epochs_for({}, full=640, items=64) == 100  # fit's defaults: 10 epochs of batches of 64


def test_the_crossover_follows_the_metrics_direction():
    kinds = {"end-to-end": "end-to-end", "features + ridge": "staged", "pixels + ridge": "staged"}

    def curves(ours, a, b):
        points = lambda values: [{"budget": bd, "items": it, "value": v}  # noqa: E731
                                 for bd, it, v in zip((0.25, 0.5, 1.0), (25, 50, 100), values)]
        return {"end-to-end": points(ours), "features + ridge": points(a), "pixels + ridge": points(b)}

    higher = crossover(curves([0.5, 0.8, 0.9], [0.7, 0.75, 0.8], [0.6, 0.7, 0.85]), kinds, True)
    assert higher["budget"] == 0.5 and higher["items"] == 50 and "from 50% of the training set (50 items)" in higher["text"]
    lower = crossover(curves([5.0, 3.0, 2.0], [4.0, 3.5, 3.0], [4.5, 2.9, 2.5]), kinds, False)
    assert lower["budget"] == 1.0 and "pixels + ridge's 2.5000" in lower["text"]
    never = crossover(curves([5.0, 4.0, 3.5], [4.0, 3.5, 3.0], [4.5, 3.9, 3.1]), kinds, False)
    assert never["budget"] is None and "never matches" in never["text"] and "3.5000 against features + ridge's 3.0000" \
        in never["text"]


def test_the_gallery_lists_the_items_where_the_pipelines_disagree():
    targets = torch.tensor([0, 1, 2, 3])
    shown = gallery({"a": np.array([0, 1, 2, 0]), "b": torch.tensor([0, 2, 2, 3]), "c": None}, targets)
    assert shown == [{"index": 1, "target": 1, "predictions": {"a": 1, "b": 2}},
                     {"index": 3, "target": 3, "predictions": {"a": 0, "b": 3}}]
    assert gallery({"a": np.array([0, 1, 2, 3])}, targets) == []
    three = {"a": np.array([0, 1, 2, 0]), "b": np.array([0, 2, 2, 0]), "c": np.array([0, 1, 2, 3])}
    assert [item["index"] for item in gallery(three, targets)] == [1, 3]
    assert [item["index"] for item in gallery(three, targets, focus=("a", "c"))] == [3, 1]  # a and c part at 3
    assert [item["index"] for item in gallery(three, targets, limit=1, focus=("a", "c"))] == [3]


# --- compare: seeds, budgets, failures ------------------------------------------------------------

FAILING = '''
class Broken:
    def fit(self, inputs, targets):
        raise ValueError("singular matrix\\nmore detail")
    def predict(self, inputs):
        return inputs


class Counting:
    sizes = []
    def fit(self, inputs, targets):
        Counting.sizes.append(len(inputs))
        self.label = int(targets[0])
    def predict(self, inputs):
        return torch.full((len(inputs),), self.label)


def staged_pipelines(seed=0):
    return {"logistic regression": LogisticRegression(), "broken": Broken(), "constant": Counting()}
'''


def test_compare_over_seeds_and_budgets_writes_the_decision_matrix_and_survives_a_failing_pipeline(tmp_path):
    recipe = get_recipe(recipe_file(tmp_path, extra=FAILING))
    lines = []
    comparison = compare_recipe(recipe, tmp_path / "out", seeds=[0, 1], budgets=[0.5, 0.25], progress=False,
                                log=lines.append)
    assert comparison == json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert (tmp_path / "out" / "report.html").is_file()
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert list(rows) == ["logistic regression", "broken", "constant", "end-to-end"]
    assert rows["broken"] == {"pipeline": "broken", "kind": "staged", "value": None,
                              "failed": "ValueError: singular matrix"}
    for name in ("logistic regression", "constant", "end-to-end"):
        row = rows[name]
        assert len(row["values"]) == 2 and row["value"] == pytest.approx(np.mean(row["values"]), abs=1e-6)
        assert row["std"] == pytest.approx(np.std(row["values"], ddof=1), abs=1e-6)
        assert row["metrics"] == {"accuracy": row["value"]} and row["train_seconds"] >= 0
        assert row["predict_ms_per_item"] > 0 and row["items_per_second"] > 0
    assert rows["logistic regression"]["parameters"] == 4 * 1 + 1 and rows["constant"]["parameters"] == 0
    assert rows["end-to-end"]["parameters"] == 4 * 8 + 8 + 8 * 2 + 2
    assert comparison["seeds"] == [0, 1] and comparison["budgets"] == [0.25, 0.5, 1.0]
    # the same nested subsets for every pipeline: 2 seeds x 3 budgets, 200 training rows
    assert sorted(recipe.Counting.sizes) == [50, 50, 100, 100, 200, 200]
    curves = comparison["learning_curves"]
    assert set(curves) == {"logistic regression", "broken", "constant", "end-to-end"}
    assert [p["items"] for p in curves["end-to-end"]] == [50, 100, 200]
    assert all(p["failed"] == "ValueError: singular matrix" for p in curves["broken"])
    assert curves["end-to-end"][-1]["value"] == rows["end-to-end"]["value"]
    assert set(comparison["crossover"]) == {"budget", "items", "text"}
    for seed in (0, 1):
        for run in (f"seed-{seed}", f"seed-{seed}-budget-0.25", f"seed-{seed}-budget-0.5"):
            assert (tmp_path / "out" / "end-to-end" / run / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "out" / "end-to-end" / "seed-0-budget-0.25" / "summary.json").read_text())
    assert summary["steps"] == json.loads((tmp_path / "out" / "end-to-end" / "seed-0" / "summary.json").read_text())["steps"]
    assert any("failed: ValueError: singular matrix" in line for line in lines)


def test_compare_checks_seeds_and_budgets_before_anything_is_written(tmp_path):
    recipe = get_recipe(str(STUB))
    with pytest.raises(UsageError, match=r"budgets are fractions of the training set in \(0, 1\].*got 1.5"):
        compare_recipe(recipe, tmp_path / "out", budgets=[0.5, 1.5], log=lambda line: None)
    with pytest.raises(UsageError, match="seeds must be non-negative integers"):
        compare_recipe(recipe, tmp_path / "out", seeds=[-1], log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_the_end_to_end_row_is_scored_by_the_recipes_evaluate_like_the_staged_rows(tmp_path):
    recipe = get_recipe(recipe_file(tmp_path, extra="\ndef evaluate(p, t):\n    return {'accuracy': 0.25, "
                                    "'errors': float((p != t).sum())}\n"))
    comparison = compare_recipe(recipe, tmp_path / "out", progress=False, log=lambda line: None)
    assert [row["value"] for row in comparison["rows"]] == [0.25, 0.25]
    assert all(set(row["metrics"]) == {"accuracy", "errors"} for row in comparison["rows"])
    assert "learning_curves" not in comparison and "gallery" not in comparison  # no budgets; not images




def test_the_recipes_direction_reaches_fits_early_stopping_and_a_contradiction_is_refused(tmp_path, monkeypatch):
    from endtoend.recipes import run

    errors = ("\ndef errors(outputs, targets):\n    return (outputs.argmax(-1) != targets).float().mean()\n"
              "def evaluate(p, t):\n    return {'errors': float((p != t).mean())}\n")
    path = recipe_file(tmp_path, 'METRIC = "accuracy"', 'METRIC = "errors"', extra=errors)
    text = Path(path).read_text().replace("HIGHER_IS_BETTER = True", "HIGHER_IS_BETTER = False").replace(
        'metrics=["accuracy"], epochs=1', 'metrics=[errors], monitor="val_errors", early_stopping=2, epochs=2')
    Path(path).write_text(text)
    recipe = get_recipe(path)
    seen = {}
    monkeypatch.setattr(run, "fit", lambda model, train, **kwargs: seen.update(kwargs))
    run.train_recipe(recipe, tmp_path / "out", progress=False)
    assert seen["metrics"]["errors"].higher_is_better is False  # the recipe's direction, given to fit
    assert seen["monitor"] == "val_errors"
    contradicting = get_recipe(recipe_file(tmp_path, "HIGHER_IS_BETTER = True", "HIGHER_IS_BETTER = False"))
    with pytest.raises(UsageError, match="HIGHER_IS_BETTER = False but its metric 'accuracy' says higher is better"):
        run.train_recipe(contradicting, tmp_path / "out2", progress=False)


def test_a_recipe_whose_splits_are_numpy_arrays_compares_with_budgets(tmp_path):
    numpy_splits = ("\ndef load_data(small=False):\n    import numpy as np\n    x = np.random.default_rng(0).normal(size=(300, 4))\n"
                    "    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)\n"
                    "    return Splits(train=(x[:200], y[:200]), val=(x[200:250], y[200:250]), test=(x[250:], y[250:]))\n")
    recipe = get_recipe(recipe_file(tmp_path, extra=numpy_splits))
    comparison = compare_recipe(recipe, tmp_path / "out", budgets=[0.5], progress=False, log=lambda line: None)
    assert [row["pipeline"] for row in comparison["rows"]] == ["logistic regression", "end-to-end"]
    assert comparison["rows"][0]["value"] > 0.9  # a linear task, for logistic regression
    summary = json.loads((tmp_path / "out" / "end-to-end" / "seed-0" / "summary.json").read_text())
    assert comparison["rows"][1]["value"] == pytest.approx(summary["metrics"]["test_accuracy"], abs=1e-6)
    assert [point["items"] for point in comparison["learning_curves"]["end-to-end"]] == [100, 200]


def test_a_recipes_budgets_are_the_default_and_budgets_given_override_them(tmp_path):
    recipe = get_recipe(recipe_file(tmp_path, extra="\nBUDGETS = (0.25, 1.0)\n"))
    comparison = compare_recipe(recipe, tmp_path / "out", progress=False, log=lambda line: None)
    assert comparison["budgets"] == [0.25, 1.0] and set(comparison["learning_curves"]) == \
        {row["pipeline"] for row in comparison["rows"]}
    comparison = compare_recipe(recipe, tmp_path / "out2", budgets=[0.5], progress=False, log=lambda line: None)
    assert comparison["budgets"] == [0.5, 1.0]


@pytest.mark.parametrize("body, shown", [
    ("    from matplotlib.figure import Figure\n    figure = Figure()\n"
     "    figure.subplots().set_title(', '.join(sorted(predictions)) + f' {len(inputs)} {len(targets)}')\n"
     "    SEEN.append(sorted(predictions))\n    return figure\n", True),
    ("    raise ValueError('no axes here')\n", False),
    ("    return 'a picture'\n", False),
])
def test_a_recipes_report_figure_is_drawn_in_the_report_or_left_out_with_one_line(tmp_path, body, shown):
    recipe = get_recipe(recipe_file(tmp_path, extra=f"\nSEEN = []\ndef report_figure(inputs, targets, predictions):\n{body}"))
    lines = []
    compare_recipe(recipe, tmp_path / "out", progress=False, log=lines.append)
    page = (tmp_path / "out" / "report.html").read_text()
    assert ("<h2>Examples</h2>" in page) is shown and (tmp_path / "out" / "comparison.json").is_file()
    if shown:
        assert recipe.SEEN == [["end-to-end", "logistic regression"]]
    else:
        assert any(line.startswith("report_figure() ") and "no examples" in line for line in lines)


# --- what a recipe's parts may declare: a staged pipeline's describe(), report_figure's runs ----

DESCRIBED = '''
class Described:
    def fit(self, inputs, targets):
        from sklearn.linear_model import LogisticRegression
        self.model = LogisticRegression().fit(inputs, targets)
        self.rows = len(targets)
        return self

    def predict(self, inputs):
        return self.model.predict(inputs)

    def describe(self):
        return {"fitted_rows": self.rows}

def staged_pipelines(seed=0):
    return {"described": Described()}

SEEN_RUNS = {}
def report_figure(inputs, targets, predictions, runs):
    from matplotlib.figure import Figure
    SEEN_RUNS.update(runs)
    return Figure()
'''


def test_a_staged_pipelines_describe_is_its_rows_details_and_report_figure_may_ask_for_the_runs(tmp_path):
    recipe = get_recipe(recipe_file(tmp_path, extra=DESCRIBED))
    comparison = compare_recipe(recipe, tmp_path / "out", budgets=[0.5], progress=False, log=lambda line: None)
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert rows["described"]["details"] == {"fitted_rows": 200}  # the full set's fit, not the budget's
    assert "details" not in rows["end-to-end"]
    assert recipe.SEEN_RUNS == {"end-to-end": tmp_path / "out" / "end-to-end" / "seed-0"}
    assert (recipe.SEEN_RUNS["end-to-end"] / "summary.json").is_file()


def test_a_progressive_schedule_is_stretched_with_a_budgets_epochs():
    from endtoend.recipes.run import _stretched_flow
    from endtoend.train import Progressive

    settings = {"epochs": 4, "progressive": Progressive(unfreeze={0: ["head."], 1: ["encoder.top."], 3: [""]})}
    stretched = _stretched_flow(settings, 10)["progressive"]  # 2.5 times the epochs
    assert stretched.unfreeze == {0: ["head."], 2: ["encoder.top."], 7: [""]} and not stretched.resolution
    assert _stretched_flow(settings, None) == {} and _stretched_flow({"epochs": 4}, 10) == {}
