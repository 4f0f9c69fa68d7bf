"""Train a recipe's end-to-end model, and compare it with the recipe's staged pipelines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from endtoend.recipes.staged import count_learned_numbers
from endtoend.report import write_comparison_report
from endtoend.train import Run, fit
from endtoend.train.rng import seed_everything
from endtoend.train.rundir import prepare_output_folder


def train_recipe(recipe: ModuleType, out: Path, *, seed: int = 0, small: bool = False,
                 epochs: int | None = None, resume: bool = False, checkpoint_every: int | None = None,
                 progress: bool = True, data=None, **overrides: Any) -> Run:
    """Build the recipe's end-to-end model (seeded) and `fit` it, writing a run directory."""
    data = data or recipe.load_data(small)
    seed_everything(seed)  # the model's initial weights depend on the seed
    model = recipe.build_model(small)
    settings = recipe.training(small)
    if epochs is not None:
        settings["epochs"] = epochs
    settings.update(overrides)
    return fit(model, data.train, val=data.val, test=data.test, out=out, seed=seed, resume=resume,
               checkpoint_every=checkpoint_every, progress=progress,
               config={"recipe": recipe.NAME + (" --small" if small else "")}, **settings)


def _staged_row(name: str, pipeline, data, metric: Callable) -> dict[str, Any]:
    x_train, y_train = data.numpy("train")
    x_test, y_test = data.numpy("test")
    started = time.time()
    pipeline.fit(x_train, y_train)
    seconds = time.time() - started
    value = float(metric(pipeline.predict(x_test), y_test))
    return {"pipeline": name, "kind": "staged", "value": round(value, 6),
            "train_seconds": round(seconds, 2), "parameters": count_learned_numbers(pipeline)}


def _accuracy(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float((predictions == targets).mean())


def compare_recipe(recipe: ModuleType, out: Path, *, seed: int = 0, small: bool = False,
                   progress: bool = True, regimes: list[str] | None = None,
                   console: Console | None = None) -> dict[str, Any]:
    """Staged pipelines and the end-to-end model on the same split; writes comparison.json.

    `regimes` (e.g. ["staged", "staged+joint", "joint"]) also trains the recipe's
    `build_pipeline()` under each regime and adds one row per regime, with linear probes.
    """
    console = console or Console()
    prepare_output_folder(out, resume=False)
    data = recipe.load_data(small)
    rows = []
    for name, pipeline in recipe.staged_pipelines(seed).items():
        console.print(f"training staged pipeline: {name} ...")
        rows.append(_staged_row(name, pipeline, data, _accuracy))
        console.print(f"  test {recipe.METRIC} {rows[-1]['value']:.4f} in {rows[-1]['train_seconds']:.1f}s")
    console.print("training the end-to-end model from raw input ...")
    run = train_recipe(recipe, out / "end-to-end", seed=seed, small=small, progress=progress, data=data)
    rows.append({"pipeline": "end-to-end " + type(run.model).__name__.replace("Sequential", "CNN"),
                 "kind": "end-to-end", "value": round(run.metrics[f"test_{recipe.METRIC}"], 6),
                 "train_seconds": round(run.seconds, 2),
                 "parameters": sum(p.numel() for p in run.model.parameters())})
    if regimes:
        from endtoend.pipeline import compare_regimes

        console.print(f"training the recipe's pipeline under the regimes: {', '.join(regimes)} ...")
        rows += compare_regimes(recipe, data, regimes, seed=seed, small=small, out=out, progress=progress,
                                log=console.print)
    comparison = {"recipe": recipe.NAME, "metric": recipe.METRIC, "higher_is_better": recipe.HIGHER_IS_BETTER,
                  "seed": seed, "small": small, "rows": rows, "end_to_end_run": str(out / "end-to-end"),
                  "torch": torch.__version__}
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2))
    write_comparison_report(out, comparison)
    console.print(comparison_table(comparison))
    console.print(f"wrote {out / 'comparison.json'} and {out / 'report.html'}")
    return comparison


def comparison_table(comparison: dict[str, Any]) -> Table:
    table = Table(title=f"{comparison['recipe']}: test {comparison['metric']} (seed {comparison['seed']})")
    with_probes = any("probes" in r for r in comparison["rows"])
    columns = ("pipeline", "kind", comparison["metric"], "train s", "parameters") + (("probes",) if with_probes else ())
    for column in columns:
        table.add_column(column, justify="left" if column in ("pipeline", "kind", "probes") else "right")
    for r in comparison["rows"]:
        cells = [r["pipeline"], r["kind"], f"{r['value']:.4f}", f"{r['train_seconds']:.1f}", f"{r['parameters']:,}"]
        if with_probes:
            cells.append(", ".join(f"{k} {v:.3f}" for k, v in r.get("probes", {}).items()))
        table.add_row(*cells)
    return table
