"""Recipe orchestration: train, compare and sweep any recipe, built in or loaded from a file.

    train_recipe      the recipe's end-to-end model, seeded, through one `fit`
    compare_recipe    its staged pipelines and that model on the same split -> comparison.json
    compare_regimes   its pipeline under each regime (staged, staged+joint, joint), with probes
    lr_find_recipe    the learning-rate range test on its model, data and fit settings

Each takes a recipe module (the contract is in endtoend.recipes.contract) and an output
folder. None parses argv or draws a table: that is endtoend.cli; what the comparison's rows,
curves and crossover are made of is endtoend.recipes.matrix; the recipe's parts, each called
and checked, come from endtoend.recipes.parts. Progress lines go through `log`.
"""

from __future__ import annotations

import inspect
import json
import math
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

from endtoend.data import Splits
from endtoend.errors import UsageError
from endtoend.pipeline import REGIMES, RegimeResult, linear_probes, train_regime
from endtoend.recipes import recipe_source
from endtoend.recipes.contract import (SEE, ModelPredictor, count_parameters, fit_staged, is_classes, latency,
                                       nested_subsets, predict_staged, score, size_of, take, timed)
from endtoend.recipes.parts import (SET_BY_COMPARE, aggregated, end_to_end_model, recipe_data, recipe_options,  # noqa: F401
                                    recipe_staged_pipelines, recipe_training, recipe_variants, rounds_of, run_folder,
                                    slug, variant_data)
from endtoend.recipes.matrix import END_TO_END, Cell, best_staged, crossover, curve_point, gallery, make_row
from endtoend.report import write_comparison_report
from endtoend.train import Run, fit
from endtoend.train.options import Progressive
from endtoend.train.evaluate import resolve_metrics
from endtoend.train.lr_find import LRFindResult, lr_find
from endtoend.train.rng import seed_everything
from endtoend.train.rundir import create_output_folder
from endtoend.userfile import one_line


def train_recipe(recipe: ModuleType, out: Path, *, seed: int = 0, small: bool = False,
                 epochs: int | None = None, resume: bool = False, checkpoint_every: int | None = None,
                 progress: bool = True, data=None, variant: str | None = None, options: dict[str, Any] | None = None,
                 log: Callable[[str], None] = print, **overrides: Any) -> Run:
    """Build the recipe's end-to-end model (seeded), or its `variant`, and `fit` it, writing a
    run directory. Settings with `rounds: N` train N + 1 times (DAgger-style data aggregation):
    after each training but the last, the recipe's `aggregate(model, train, round, small)`
    returns the training pair of the next, which goes on from the weights reached; the earlier
    rounds' run directories sit beside `out` (OUT-round-0, ...), the last one is `out`."""
    options = recipe_options(recipe, options or {})
    data = data or recipe_data(recipe, small, options)
    build, settings = end_to_end_model(recipe, small, variant)
    rounds = rounds_of(recipe, settings)
    seed_everything(seed)  # the model's initial weights depend on the seed
    model = build()
    if epochs is not None:
        settings["epochs"] = epochs
    settings.update(overrides)
    settings["metrics"] = _metrics_with_direction(recipe, settings.get("metrics"))
    test = data.test if getattr(recipe, "FIT_TEST", True) else None  # drive's test split is tracks, not frames
    config = _run_config(recipe, small, data, variant, options)
    train, spent = variant_data(recipe, variant, data.train, small), 0.0
    for round in range(rounds + 1):
        folder = out if round == rounds else out.with_name(f"{out.name}-round-{round}")
        if rounds:
            log(f"  round {round} of {rounds}: training on {size_of(train[1])} items ...")
        run = fit(model, train, val=data.val, test=test, out=folder, seed=seed,
                  resume=resume and folder.exists(), checkpoint_every=checkpoint_every, progress=progress,
                  config={**config, "round": round, "rounds": rounds} if rounds else config, **settings)
        if round == rounds:
            break
        train, seconds = timed(lambda: aggregated(recipe, run.model, train, round, small))
        model, spent = run.model, spent + run.seconds + seconds
    if rounds:
        run.seconds += spent  # every round, and the data each one gathered
    return run


def _run_config(recipe: ModuleType, small: bool, data: Splits, variant: str | None = None,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run directory records of its recipe: `e2e predict` rebuilds the model from it."""
    return {"recipe": recipe.NAME + (" --small" if small else ""), "recipe_source": recipe_source(recipe),
            "small": small, "variant": variant, "options": options or {}, "classes": is_classes(data.train[1])}


def _metrics_with_direction(recipe: ModuleType, metrics: Any) -> dict[str, Any]:
    """fit's metrics, the one named METRIC given the recipe's HIGHER_IS_BETTER when it has no
    direction of its own (so `monitor="val_<METRIC>"` stops early the right way); a direction
    that contradicts the recipe's is refused."""
    resolved = resolve_metrics(metrics)
    primary = resolved.get(recipe.METRIC)
    if primary is not None:
        own = getattr(primary, "higher_is_better", None)
        if own is None:
            primary.higher_is_better = recipe.HIGHER_IS_BETTER
        elif own != recipe.HIGHER_IS_BETTER:
            raise UsageError(f"recipe {recipe.NAME!r}: HIGHER_IS_BETTER = {recipe.HIGHER_IS_BETTER} but its metric "
                             f"{recipe.METRIC!r} says higher is {'better' if own else 'worse'}; make them agree ({SEE})")
    return resolved


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
                    out: str | Path, progress: bool = True, measure: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, Cell]:
    """Train the recipe's pipeline under each regime on `data` (the recipe's Splits), score it
    with the recipe's `evaluate` like any other row, and add its linear probes. Run
    directories: out/<regime>/. Every regime starts from the same initial weights (the pipeline
    is built after seeding)."""
    regimes = check_regimes(recipe, regimes)
    settings = recipe.regime_training(small)
    classes = is_classes(data.train[1])
    results: dict[str, RegimeResult] = {}
    cells = {}
    for regime in regimes:
        log(f"training the pipeline under regime {regime} ...")
        seed_everything(seed)  # the same initial weights for every regime
        pipeline = recipe.build_pipeline(small)
        result = train_regime(pipeline, regime, data.train, settings, val=data.val, test=data.test, seed=seed,
                              out=Path(out) / regime, progress=progress,
                              staged=results.get("staged") if regime == "staged+joint" else None,
                              config=_run_config(recipe, small, data))
        results[regime] = result
        cell = _score_model(recipe, result.pipeline, data.test, result.seconds, classes=classes,
                            settings=settings.fit, measure=measure)
        cell.extra = {"probes": linear_probes(result.pipeline, data.train, data.test),
                      "runs": {phase: str(run.folder) for phase, run in result.runs.items()}}
        cells[f"regime: {regime}"] = cell
        shown = ", ".join(f"{stage} {value:.4f}" for stage, value in cell.extra["probes"].items())
        log(_scored(recipe, cell) + f"; linear probes: {shown}")
    return cells


# --- compare: every pipeline, every seed, every budget, scored by the recipe's evaluate ---------

def compare_recipe(recipe: ModuleType, out: Path, *, seeds: list[int] | tuple[int, ...] = (0,),
                   budgets: list[float] | None = None, small: bool = False, progress: bool = True,
                   regimes: list[str] | None = None, options: dict[str, Any] | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """The recipe's staged pipelines and its end-to-end model, each trained once per seed on the
    same data and scored by the recipe's `evaluate`; writes out/comparison.json and
    out/report.html into a fresh folder, and returns the comparison (docs/recipes.md).

    `budgets` (fractions of the training set, e.g. [0.1, 0.5, 1.0]; default the recipe's
    BUDGETS, if any) also trains every pipeline on nested subsets of it and adds learning
    curves and the crossover. `regimes` (e.g.
    ["staged", "staged+joint", "joint"]) adds one row per regime of the recipe's pipeline.
    `options` are the recipe's own (its OPTIONS, e.g. drive's eval_seed), given to load_data.
    """
    out = Path(out)
    seeds = check_seeds(seeds)
    budgets = budgets or getattr(recipe, "BUDGETS", None)
    curve_budgets = check_budgets(budgets) if budgets else None
    trained_budgets = sorted(set(curve_budgets or []) | {1.0}, reverse=True)  # the full set first: the rows
    regimes = check_regimes(recipe, regimes) if regimes else []
    options = recipe_options(recipe, options or {})
    data = recipe_data(recipe, small, options)
    rows_of_models = {None: END_TO_END, **{name: f"{END_TO_END}: {name}" for name in recipe_variants(recipe, small)}}
    for variant in rows_of_models:  # checked before anything is written
        end_to_end_model(recipe, small, variant)
    recipe_staged_pipelines(recipe, seeds[0], small)
    _fresh_folder(out, "compare")
    train_inputs, train_targets = data.train
    test_inputs, test_targets = data.test
    classes = is_classes(train_targets)
    cells: dict[str, dict[tuple[int, float], Cell]] = defaultdict(dict)
    kinds: dict[str, str] = {}
    for seed in seeds:
        subsets = nested_subsets(train_targets, trained_budgets, seed)
        items = {budget: len(indices) for budget, indices in subsets.items()}  # ceil(budget * n): any seed
        for budget in trained_budgets:
            train = (take(train_inputs, subsets[budget]), take(train_targets, subsets[budget]))
            first = seed == seeds[0] and budget == 1.0
            where = f"seed {seed}" + ("" if budget == 1.0 else f", {budget:.0%} of train = {len(subsets[budget])} items")
            for name, pipeline in recipe_staged_pipelines(recipe, seed, small).items():
                log(f"training staged pipeline: {name} ({where}) ...")
                cell = cells[name][seed, budget] = _train_staged(recipe, pipeline, train, data.test, measure=first)
                kinds[name] = "staged"
                log(f"  failed: {cell.failed}" if cell.failed else _scored(recipe, cell))
            for variant, row in rows_of_models.items():
                log(f"training the end-to-end model{f' ({variant})' if variant else ''} from raw input ({where}) ...")
                settings = end_to_end_model(recipe, small, variant)[1]
                folder = out / run_folder(variant) / (f"seed-{seed}" if budget == 1.0
                                                       else f"seed-{seed}-budget-{budget:g}")
                epochs = None if budget == 1.0 else _epochs_for(settings, size_of(train_targets), size_of(train[1]))
                run = train_recipe(recipe, folder, seed=seed, small=small, progress=progress, epochs=epochs,
                                   data=Splits(train=train, val=data.val, test=data.test), variant=variant,
                                   options=options, log=log, **_stretched_flow(settings, epochs))
                cell = cells[row][seed, budget] = _score_model(recipe, run.model, data.test, run.seconds,
                                                               classes=classes, settings=settings, measure=first)
                kinds[row] = "end-to-end"
                log(_scored(recipe, cell))
        if regimes:
            log(f"training the recipe's pipeline under the regimes: {', '.join(regimes)} (seed {seed}) ...")
            for name, cell in compare_regimes(recipe, data, regimes, seed=seed, small=small, measure=seed == seeds[0],
                                              out=out / "regimes" / f"seed-{seed}", progress=progress, log=log).items():
                cells[name][seed, 1.0] = cell
                kinds[name] = "staged" if name == "regime: staged" else "end-to-end"

    measured = {name: by_run[seeds[0], 1.0] for name, by_run in cells.items()}  # timed and kept: first seed, full set
    timing_items = getattr(recipe, "TIMING_ITEMS", None)
    if timing_items == 0:  # drive: an item is a whole drive; its evaluate times the policy per frame
        log("timing skipped: the recipe times its pipelines itself (TIMING_ITEMS = 0)")
    else:
        measure_speed(measured, test_inputs if timing_items is None else test_inputs[:timing_items], log)
    rows = [make_row(recipe, name, kinds[name], [cells[name][seed, 1.0] for seed in seeds]) for name in cells]
    comparison = {"recipe": recipe.NAME, "description": recipe.DESCRIPTION, "metric": recipe.METRIC,
                  "higher_is_better": recipe.HIGHER_IS_BETTER, "seeds": seeds, "budgets": sorted(trained_budgets),
                  "small": small, "options": options, "rows": rows, "end_to_end_run": str(out / "end-to-end" / f"seed-{seeds[0]}"),
                  "torch": torch.__version__}
    if curve_budgets:
        curves = {name: [curve_point(recipe, budget, items[budget], [by_run[seed, budget] for seed in seeds])
                         for budget in sorted(trained_budgets)]
                  for name, by_run in cells.items() if not name.startswith("regime: ")}
        comparison["learning_curves"] = curves
        comparison["crossover"] = crossover(curves, kinds, recipe.HIGHER_IS_BETTER)
    predictions = {name: cell.predictions for name, cell in measured.items() if cell.failed is None}
    images = test_inputs if _are_images(test_inputs) else None
    if images is not None:
        comparison["gallery"] = gallery(predictions, test_targets,
                                        focus=(END_TO_END, best_staged(rows, recipe.HIGHER_IS_BETTER)))
    runs = {row: out / run_folder(variant) / f"seed-{seeds[0]}" for variant, row in rows_of_models.items()}
    examples = _examples(recipe, data.test, predictions, log, runs)
    animations = _animations(recipe, data.test, predictions, out, log)
    if animations:
        comparison["animations"] = animations
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2))
    write_comparison_report(out, comparison, images=images, examples=examples)
    return comparison


ANIMATION_FPS = 5


def _animations(recipe: ModuleType, test: tuple, predictions: dict[str, Any], out: Path,
                log: Callable[[str], None]) -> dict[str, str]:
    """The recipe's animations of test predictions (optional `report_animation`: {title: uint8
    frames (T, H, W, 3)}) as GIFs beside report.html, at ANIMATION_FPS: {title: file name}. One
    that fails is left out with one line, like report_figure."""
    if not callable(getattr(recipe, "report_animation", None)):
        return {}
    import imageio.v3 as imageio

    try:
        found = recipe.report_animation(test[0], test[1], predictions)
        written = {}
        for title, frames in found.items():
            frames = np.asarray(frames)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
                raise ValueError(f"{title!r}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
            name = f"animation-{slug(title)}.gif"
            imageio.imwrite(out / name, frames, duration=1000 / ANIMATION_FPS, loop=0)
            written[title] = name
        return written
    except Exception as error:  # noqa: BLE001 - the recipe's drawing code may raise anything
        log(f"report_animation() failed, so report.html has no animations: {one_line(error)}")
        return {}


def _examples(recipe: ModuleType, test: tuple, predictions: dict[str, Any], log: Callable[[str], None],
              runs: dict[str, Path] | None = None):
    """The recipe's own picture of test predictions (optional `report_figure`), or None; a
    report_figure that declares `runs` also gets {row: its first seed's full-set run directory}
    of the end-to-end rows (to draw how they trained). A picture that fails is left out of the
    report with one line: the comparison stands."""
    if not callable(getattr(recipe, "report_figure", None)):
        return None
    from matplotlib.figure import Figure

    try:
        takes_runs = "runs" in inspect.signature(recipe.report_figure).parameters
        figure = recipe.report_figure(test[0], test[1], predictions, **({"runs": runs} if takes_runs else {}))
    except Exception as error:  # noqa: BLE001 - the recipe's drawing code may raise anything
        log(f"report_figure() failed, so report.html has no examples: {one_line(error)}")
        return None
    if not isinstance(figure, Figure):
        log(f"report_figure() returned {type(figure).__name__}, not a matplotlib Figure; report.html has no examples")
        return None
    return figure


def check_seeds(seeds: Any) -> list[int]:
    seeds = list(dict.fromkeys(seeds))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**64 for s in seeds):
        raise UsageError(f"seeds must be non-negative integers such as 0,1,2, got {seeds!r}")
    return seeds


def check_budgets(budgets: Any) -> list[float]:
    """Fractions of the training set in (0, 1], sorted, repeats dropped."""
    bad = [b for b in budgets if not isinstance(b, (int, float)) or isinstance(b, bool) or not 0 < b <= 1]
    if bad or not budgets:
        raise UsageError(f"budgets are fractions of the training set in (0, 1], such as 0.1,0.25,0.5,1.0; "
                         f"got {bad[0] if bad else 'none'}")
    return sorted({float(b) for b in budgets})


def _epochs_for(settings: dict[str, Any], full: int, items: int) -> int:
    """Epochs on a budget that give the end-to-end model as many optimizer steps as on the full
    set: a small budget is less data, not also a shorter training."""
    epochs, batch = settings.get("epochs", 10), settings.get("batch_size", 64)
    steps = lambda n: max(n // batch, 1)  # noqa: E731 - as fit counts them: the last partial batch is dropped
    return max(epochs, math.ceil(epochs * steps(full) / steps(items)))


def _stretched_flow(settings: dict[str, Any], epochs: int | None) -> dict[str, Any]:
    """A Progressive schedule (unfreezing, resizing) stretched like a budget's epochs, so that each
    phase lasts as many optimizer steps as on the full set; {} when there is nothing to stretch."""
    progressive = settings.get("progressive")
    if epochs is None or progressive is None:
        return {}
    factor = epochs / settings.get("epochs", 10)

    def stretch(schedule):  # floor keeps distinct epochs distinct (factor >= 1); round() could merge 1.5 and 2.5
        return schedule and {math.floor(epoch * factor): value for epoch, value in schedule.items()}

    return {"progressive": Progressive(resolution=stretch(progressive.resolution),
                                       unfreeze=stretch(progressive.unfreeze))}


def _train_staged(recipe: ModuleType, pipeline: Any, train: tuple, test: tuple, *, measure: bool) -> Cell:
    """Fit one staged pipeline and score it; an exception in its own code is its row's result
    (marked failed, one line), not the end of the comparison. A broken contract still raises."""
    try:
        _, seconds = timed(lambda: fit_staged(pipeline, *train))
        predictions = predict_staged(pipeline, test[0])
        cell = Cell(score(recipe, predictions, test[1]), seconds)
        if measure:
            cell.predictions, cell.predict = predictions, lambda inputs: predict_staged(pipeline, inputs)
            cell.measures = {"parameters": count_parameters(pipeline)}
            if callable(getattr(pipeline, "describe", None)):  # its own numbers: the row's "details"
                cell.extra = {"details": pipeline.describe()}
        return cell
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's pipeline may raise anything
        return Cell(failed=one_line(error))


def _score_model(recipe: ModuleType, model: torch.nn.Module, test: tuple, seconds: float, *, classes: bool,
                 settings: dict[str, Any], measure: bool) -> Cell:
    """Score a trained end-to-end model (or a regime's pipeline) like a staged pipeline."""
    predictor = ModelPredictor(recipe, model, classes=classes, batch_size=settings.get("batch_size", 64))
    predictions = predictor.predict(test[0])
    cell = Cell(score(recipe, predictions, test[1]), seconds)
    if measure:
        cell.predictions, cell.predict = predictions, predictor.predict
        cell.measures = {"parameters": count_parameters(model)}
    return cell


def measure_speed(cells: dict[str, Cell], inputs: Any, log: Callable[[str], None]) -> None:
    """Latency and throughput of every pipeline on the test inputs, measured one pipeline after
    another once all training is done (right after a training the machine is still busy, and
    the first call pays for lazy initialisation: one warm-up call each)."""
    log("timing predictions on the test inputs ...")
    for name, cell in cells.items():
        if cell.predict is None:
            continue
        try:
            milliseconds = latency(cell.predict, inputs)  # warms up first
            _, seconds = timed(lambda: cell.predict(inputs))
            cell.measures.update(predict_ms_per_item=milliseconds, items_per_second=size_of(inputs) / seconds)
        except UsageError:
            raise
        except Exception as error:  # noqa: BLE001 - e.g. a pipeline that cannot predict a single item
            log(f"  could not time {name}: {one_line(error)}")
            cell.measures.update(predict_ms_per_item=None, items_per_second=None)


def _scored(recipe: ModuleType, cell: Cell) -> str:
    return f"  test {recipe.METRIC} {cell.scores[recipe.METRIC]:.4f} in {cell.seconds:.1f}s"


def _are_images(inputs: Any) -> bool:
    return isinstance(inputs, (torch.Tensor, np.ndarray)) and inputs.ndim == 4 and inputs.shape[1] in (1, 3)


def _fresh_folder(out: Path, verb: str) -> None:
    """Create `out`, refusing an existing non-empty one: `verb` (compare, lr-find) cannot
    resume, so the advice is another folder, not --resume."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"output folder {out} already exists and is not empty; {verb} cannot resume, so "
                         "choose another --out (nothing was overwritten)")
    create_output_folder(out)
