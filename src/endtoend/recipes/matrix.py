"""The decision matrix: what `e2e compare` makes of its trained pipelines.

    Cell          one pipeline trained once (one seed, one budget) and scored
    make_row      a comparison.json row: the metric's mean, std and per-seed values, the measures
    curve_point   one point of a learning curve
    crossover     the smallest budget at which end-to-end matches the best staged pipeline
    gallery       test items on which the pipelines disagree

Pure functions of the cells: nothing here trains, times or writes (that is endtoend.recipes.run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from endtoend.recipes.contract import to_numpy

@dataclass
class Cell:
    """One pipeline trained once (at one seed, on one budget) and scored on the test split."""

    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    failed: str | None = None
    measures: dict[str, Any] = field(default_factory=dict)  # latency, throughput, size: first seed, full budget
    predictions: Any = None                                 # for the gallery and examples: first seed, full budget
    predict: Callable[[Any], Any] | None = None             # kept to be timed once every training is done
    extra: dict[str, Any] = field(default_factory=dict)     # a regime's probes and run folders


END_TO_END = "end-to-end"


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def make_row(recipe: ModuleType, name: str, kind: str, runs: list[Cell]) -> dict[str, Any]:
    """One row of comparison.json: the primary metric's mean, std and per-seed values, every
    metric's mean, and the first seed's latency, throughput and size."""
    row: dict[str, Any] = {"pipeline": name, "kind": kind}
    failed = next((cell.failed for cell in runs if cell.failed), None)
    if failed:
        return {**row, "value": None, "failed": failed}
    values = [cell.scores[recipe.METRIC] for cell in runs]
    mean, std = mean_std(values)
    row.update(value=round(mean, 6), std=round(std, 6), values=[round(v, 6) for v in values],
               metrics={metric: round(float(np.mean([cell.scores[metric] for cell in runs])), 6)
                        for metric in runs[0].scores},
               train_seconds=round(float(np.mean([cell.seconds for cell in runs])), 2))
    measures = runs[0].measures
    row.update(predict_ms_per_item=rounded(measures.get("predict_ms_per_item"), 4),
               items_per_second=rounded(measures.get("items_per_second"), 1), parameters=measures["parameters"])
    return {**row, **runs[0].extra}


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def curve_point(recipe: ModuleType, budget: float, items: int, runs: list[Cell]) -> dict[str, Any]:
    point: dict[str, Any] = {"budget": budget, "items": items}
    failed = next((cell.failed for cell in runs if cell.failed), None)
    if failed:
        return {**point, "value": None, "failed": failed}
    mean, std = mean_std([cell.scores[recipe.METRIC] for cell in runs])
    return {**point, "value": round(mean, 6), "std": round(std, 6)}


def crossover(curves: dict[str, list[dict[str, Any]]], kinds: dict[str, str], higher_is_better: bool) -> dict[str, Any]:
    """The smallest budget at which end-to-end is at least as good as the best staged pipeline
    at that budget, in words (or that it never is, and by how much it trails at the largest)."""
    better = max if higher_is_better else min
    staged = [name for name in curves if kinds.get(name) == "staged"]
    ours = curves[END_TO_END]
    gap = None
    for i, point in enumerate(ours):
        rivals = [(curves[name][i]["value"], name) for name in staged if curves[name][i]["value"] is not None]
        if point["value"] is None or not rivals:
            continue
        best, best_name = better(rivals)
        gap = (point["value"], best, best_name, point)
        if (point["value"] >= best) if higher_is_better else (point["value"] <= best):
            return {"budget": point["budget"], "items": point["items"],
                    "text": f"End-to-end is at least as good as the best staged pipeline from {point['budget']:.0%} "
                            f"of the training set ({point['items']} items) on the budgets measured: "
                            f"{point['value']:.4f} against {best_name}'s {best:.4f}."}
    if gap is None:
        return {"budget": None, "items": None, "text": "No budget has both an end-to-end and a staged result."}
    value, best, best_name, point = gap
    return {"budget": None, "items": None,
            "text": f"End-to-end never matches the best staged pipeline on the budgets measured: at "
                    f"{point['budget']:.0%} ({point['items']} items) it scores {value:.4f} against "
                    f"{best_name}'s {best:.4f}."}


def best_staged(rows: list[dict[str, Any]], higher_is_better: bool) -> str | None:
    scored = [(row["value"], row["pipeline"]) for row in rows if row["kind"] == "staged" and row["value"] is not None
              and not row["pipeline"].startswith("regime: ")]
    return (max if higher_is_better else min)(scored)[1] if scored else None


def gallery(predictions: dict[str, Any], targets: Any, limit: int = 12,
            focus: tuple[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Test items on which the pipelines' predictions disagree (`limit` of them, in test order),
    with each pipeline's prediction: labels only, the pipelines that predicted something else
    skipped. Items where the two `focus` pipelines (end-to-end and the best staged one)
    disagree come first: they show what the choice between them changes."""
    targets = np.asarray(to_numpy(targets))
    labels = {}
    for name, value in predictions.items():
        value = np.asarray(to_numpy(value)) if value is not None else None
        if value is not None and value.shape == targets.shape and targets.ndim == 1:
            labels[name] = value
    if len(labels) < 2:
        return []
    stacked = np.stack(list(labels.values()))
    disagree = np.flatnonzero((stacked != stacked[0]).any(axis=0))
    if focus and all(name in labels for name in focus):
        split = labels[focus[0]][disagree] != labels[focus[1]][disagree]
        disagree = np.concatenate([disagree[split], disagree[~split]])
    disagree = disagree[:limit]
    return [{"index": int(i), "target": targets[i].item(),
             "predictions": {name: value[i].item() for name, value in labels.items()}} for i in disagree]
