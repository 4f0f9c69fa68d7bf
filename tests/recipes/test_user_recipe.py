"""A user's recipe file that the library has never seen: a regression task (MAE, lower is better),
a hand-built feature stage, its own predict and evaluate, through `e2e compare FILE --seeds
--budgets` with no change to the library."""

import json
from pathlib import Path

from endtoend.cli import main

RECIPE = Path(__file__).parent / "regression_recipe.py"


def test_a_regression_recipe_from_a_file_runs_through_compare_with_seeds_and_budgets(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(RECIPE), "--small", "--seeds", "0,1", "--budgets", "0.5,1.0", "--out", str(out),
                 "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["metric"] == "mae" and comparison["higher_is_better"] is False
    assert "lower is better" in stdout and "lower is better" in (out / "report.html").read_text()
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert list(rows) == ["FFT features + ridge", "spectrum + ridge", "end-to-end"]
    for row in rows.values():
        assert "failed" not in row and set(row["metrics"]) == {"mae", "rmse"}
        assert 0 < row["value"] == row["metrics"]["mae"] <= row["metrics"]["rmse"]  # MAE never exceeds RMSE
        assert len(row["values"]) == 2
    # ridge on the full training set is deterministic; the network's initial weights are not
    assert rows["end-to-end"]["values"][0] != rows["end-to-end"]["values"][1] and rows["end-to-end"]["std"] > 0
    assert rows["spectrum + ridge"]["std"] == 0
    assert rows["FFT features + ridge"]["parameters"] == 4 + 1 + 3 * 4  # ridge weights, intercept; scaler mean_, var_, scale_
    assert rows["spectrum + ridge"]["parameters"] == 32 + 1

    # The crossover uses the metric's direction: the first budget at which end-to-end's MAE is
    # at most the best (lowest) staged MAE.
    curves = comparison["learning_curves"]
    assert [p["budget"] for p in curves["end-to-end"]] == [0.5, 1.0]
    at = [i for i in range(2) if curves["end-to-end"][i]["value"]
          <= min(curves[name][i]["value"] for name in ("FFT features + ridge", "spectrum + ridge"))]
    assert comparison["crossover"]["budget"] == ([0.5, 1.0][at[0]] if at else None)
    assert comparison["crossover"]["text"] in stdout
