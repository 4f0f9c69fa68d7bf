"""Recipe orchestration: train, compare and sweep any recipe, built in or loaded from a file.

    train_recipe      the recipe's end-to-end model, seeded, through one `fit`
    compare_recipe    its staged pipelines and that model on the same split -> comparison.json
    compare_regimes   its pipeline under each regime (staged, staged+joint, joint), with probes
    lr_find_recipe    the learning-rate range test on its model, data and fit settings

Each takes a recipe module (the contract is in endtoend.recipes) and an output folder. None
parses argv or draws a table: that is endtoend.cli. Progress lines go through `log`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

from endtoend.errors import UsageError
from endtoend.pipeline import REGIMES, RegimeResult, linear_probes, train_regime
from endtoend.recipes.staged import count_learned_numbers
from endtoend.report import write_comparison_report
from endtoend.train import Run, fit
from endtoend.train.lr_find import LRFindResult, lr_find
from endtoend.train.rng import seed_everything
from endtoend.train.rundir import create_output_folder


def train_recipe(recipe: ModuleType, out: Path, *, seed: int = 0, small: bool = False,
                 epochs: int | None = None, resume: bool = False, checkpoint_every: int | None = None,
                 progress: bool = True, data=None, **overrides: Any) -> Run:
    """Build the recipe's end-to-end model (seeded) and `fit` it, writing a run directory."""
    data = data or recipe_data(recipe, small)
    seed_everything(seed)  # the model's initial weights depend on the seed
    model = recipe.build_model(small)
    settings = recipe_training(recipe, small)
    if epochs is not None:
        settings["epochs"] = epochs
    settings.update(overrides)
    return fit(model, data.train, val=data.val, test=data.test, out=out, seed=seed, resume=resume,
               checkpoint_every=checkpoint_every, progress=progress,
               config={"recipe": recipe.NAME + (" --small" if small else "")}, **settings)


def lr_find_recipe(recipe: ModuleType, out: str | Path, *, seed: int = 0, small: bool = False,
                   **overrides: Any) -> LRFindResult:
    """The range test on the recipe's model (seeded), training split and fit settings (loss,
    transforms, optimizer, weight_decay, batch_size); `overrides` go to `lr_find` (start_lr,
    end_lr, steps, ...). Writes out/lr_find.png and out/lr_find.json into a fresh folder."""
    out = Path(out)
    _fresh_folder(out, "lr-find")
    data = recipe_data(recipe, small)
    seed_everything(seed)
    model = recipe.build_model(small)
    settings = recipe_training(recipe, small)
    kwargs = {key: settings[key] for key in ("loss", "transforms", "optimizer", "weight_decay", "batch_size")
              if key in settings}
    kwargs.update(overrides)
    return lr_find(model, data.train, seed=seed, out=out, **kwargs)


def check_regimes(recipe: ModuleType, regimes: list[str]) -> list[str]:
    """The regimes to train, checked before anything trains: each one known, duplicates
    dropped (order kept), and the recipe able to build a pipeline. Raises UsageError."""
    unknown = [regime for regime in regimes if regime not in REGIMES]
    if unknown or not regimes:
        problem = f"unknown regime {unknown[0]!r}" if unknown else "no regime given"
        raise UsageError(f"{problem}; the regimes are {', '.join(REGIMES)} (e.g. staged,staged+joint,joint)")
    for name in ("build_pipeline", "regime_training"):
        if not callable(getattr(recipe, name, None)):
            raise UsageError(f"recipe {recipe.NAME!r} has no {name}(); it cannot be trained under regimes")
    return list(dict.fromkeys(regimes))


def compare_regimes(recipe: ModuleType, data: Any, regimes: list[str], *, seed: int = 0, small: bool = False,
                    out: str | Path, progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train the recipe's pipeline under each regime on `data` (the recipe's Splits); one
    comparison.json row per regime, with the linear probes. Run directories: out/regimes/<regime>/.

    Every regime starts from the same initial weights (the pipeline is built after seeding).
    """
    regimes = check_regimes(recipe, regimes)
    settings = recipe.regime_training(small)
    metric = f"test_{recipe.METRIC}"
    results: dict[str, RegimeResult] = {}
    rows = []
    for regime in regimes:
        log(f"training the pipeline under regime {regime} ...")
        seed_everything(seed)  # the same initial weights for every regime
        pipeline = recipe.build_pipeline(small)
        started = time.time()
        result = train_regime(pipeline, regime, data.train, settings, val=data.val, test=data.test, seed=seed,
                              out=Path(out) / "regimes" / regime, progress=progress,
                              staged=results.get("staged") if regime == "staged+joint" else None,
                              config={"recipe": recipe.NAME + (" --small" if small else "")})
        results[regime] = result
        probes = linear_probes(result.pipeline, data.train, data.test)
        rows.append({"pipeline": f"regime: {regime}", "kind": "staged" if regime == "staged" else "end-to-end",
                     "value": round(result.metrics[metric], 6), "train_seconds": round(result.seconds, 2),
                     "parameters": sum(p.numel() for p in result.pipeline.parameters()), "probes": probes,
                     "runs": {phase: str(run.folder) for phase, run in result.runs.items()}})
        shown = ", ".join(f"{stage} {value:.4f}" for stage, value in probes.items())
        log(f"  test {recipe.METRIC} {rows[-1]['value']:.4f} in {result.seconds:.1f}s "
            f"(this call {time.time() - started:.1f}s); linear probes: {shown}")
    return rows


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
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Staged pipelines and the end-to-end model on the same split; writes out/comparison.json
    and out/report.html into a fresh folder, and returns the comparison.

    `regimes` (e.g. ["staged", "staged+joint", "joint"]) also trains the recipe's
    `build_pipeline()` under each regime and adds one row per regime, with linear probes.
    """
    out = Path(out)
    regimes = check_regimes(recipe, regimes) if regimes else []
    data, pipelines = recipe_data(recipe, small), recipe_staged_pipelines(recipe, seed)
    _check_metric(recipe, recipe_training(recipe, small))
    _fresh_folder(out, "compare")
    rows = []
    for name, pipeline in pipelines.items():
        log(f"training staged pipeline: {name} ...")
        rows.append(_staged_row(name, pipeline, data, _accuracy))
        log(f"  test {recipe.METRIC} {rows[-1]['value']:.4f} in {rows[-1]['train_seconds']:.1f}s")
    log("training the end-to-end model from raw input ...")
    run = train_recipe(recipe, out / "end-to-end", seed=seed, small=small, progress=progress, data=data)
    rows.append({"pipeline": "end-to-end " + type(run.model).__name__.replace("Sequential", "CNN"),
                 "kind": "end-to-end", "value": round(run.metrics[f"test_{recipe.METRIC}"], 6),
                 "train_seconds": round(run.seconds, 2),
                 "parameters": sum(p.numel() for p in run.model.parameters())})
    if regimes:
        log(f"training the recipe's pipeline under the regimes: {', '.join(regimes)} ...")
        rows += compare_regimes(recipe, data, regimes, seed=seed, small=small, out=out, progress=progress, log=log)
    comparison = {"recipe": recipe.NAME, "metric": recipe.METRIC, "higher_is_better": recipe.HIGHER_IS_BETTER,
                  "seed": seed, "small": small, "rows": rows, "end_to_end_run": str(out / "end-to-end"),
                  "torch": torch.__version__}
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2))
    write_comparison_report(out, comparison)
    return comparison


# --- the recipe's parts, checked where they are called: a wrong one is one line naming it ----------

def recipe_data(recipe: ModuleType, small: bool):
    data = recipe.load_data(small)
    if not all(hasattr(data, split) for split in ("train", "val", "test")):
        raise UsageError(f"recipe {recipe.NAME!r}: load_data() must return endtoend.data.Splits(train=, val=, "
                         f"test=), got {type(data).__name__}")
    return data


def recipe_training(recipe: ModuleType, small: bool) -> dict[str, Any]:
    settings = recipe.training(small)
    if not isinstance(settings, dict):
        raise UsageError(f"recipe {recipe.NAME!r}: training() must return a dict of endtoend.fit arguments, "
                         f"got {type(settings).__name__}")
    return dict(settings)


def recipe_staged_pipelines(recipe: ModuleType, seed: int) -> dict[str, Any]:
    pipelines = recipe.staged_pipelines(seed)
    if not isinstance(pipelines, dict):
        raise UsageError(f"recipe {recipe.NAME!r}: staged_pipelines() must return {{name: estimator}}, "
                         f"got {type(pipelines).__name__}")
    for name, pipeline in pipelines.items():
        if not (hasattr(pipeline, "fit") and hasattr(pipeline, "predict")):
            raise UsageError(f"recipe {recipe.NAME!r}: staged pipeline {name!r} needs fit() and predict() "
                             f"(a scikit-learn estimator), got {type(pipeline).__name__}")
    return pipelines


def _check_metric(recipe: ModuleType, settings: dict[str, Any]) -> None:
    """The comparison reads test_<METRIC> from the end-to-end run: it must be computed."""
    from endtoend.train.evaluate import resolve_metrics

    computed = ["loss", *resolve_metrics(settings.get("metrics"))]
    if recipe.METRIC not in computed:
        raise UsageError(f"recipe {recipe.NAME!r}: METRIC = {recipe.METRIC!r} is not among what its training() "
                         f"computes ({', '.join(computed)}); add it to training()['metrics'] or change METRIC")


def _fresh_folder(out: Path, verb: str) -> None:
    """Create `out`, refusing an existing non-empty one: `verb` (compare, lr-find) cannot
    resume, so the advice is another folder, not --resume."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"output folder {out} already exists and is not empty; {verb} cannot resume, so "
                         "choose another --out (nothing was overwritten)")
    create_output_folder(out)
