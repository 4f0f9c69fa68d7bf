"""Do the shapes-world models hold on scenes from another generator that follows the spec?

The issue asks that the segment and detect models hold within a few points on scenes drawn by a
generator other than ours. This scores every pipeline of finished `e2e compare` runs twice: on
the recipe's own test split (seed 13, the one compare scored) and on `make_other_scenes` from
benchmarks/other_shapes.py (an independent generator written from the same spec), and prints the
difference. End-to-end models are loaded from their run directories (every full-budget seed);
staged pipelines are not saved by compare, so each is refitted once, with the first seed, on the
recipe's training split (the one the comparison used: --small as recorded), then scored.

    python benchmarks/other_generator.py COMPARE_OUT [COMPARE_OUT ...] [--scenes 500] [--seed 13]
                                         [--no-staged]

Writes COMPARE_OUT/other_generator.json: every metric, per pipeline and seed, on both test sets.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from endtoend.data.shapes import stack_images, stack_masks
from endtoend.errors import UsageError
from endtoend.recipes import get_recipe
from endtoend.recipes.contract import ModelPredictor, fit_staged, predict_staged, score
from endtoend.recipes.detect_boxes import pad_targets
from endtoend.recipes.matrix import END_TO_END, mean_std
from endtoend.recipes.predict import load_trained
from endtoend.userfile import one_line
from other_shapes import make_other_scenes

SHAPES_RECIPES = ("segment", "detect")
OWN, OTHER = "own test", "other generator"
RUN_FOLDER = re.compile(r"seed-(\d+)")  # full budget only: seed-S-budget-B does not match


def read_comparison(folder: Path) -> dict:
    """comparison.json of a shapes-world comparison; UsageError (one line) otherwise."""
    try:
        comparison = json.loads((folder / "comparison.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{folder} has no readable comparison.json; give the --out folder of `e2e compare`") from None
    if comparison.get("recipe") not in SHAPES_RECIPES:
        raise UsageError(f"{folder}: recipe {comparison.get('recipe')!r} is not a shapes-world recipe; this "
                         f"benchmark scores {' and '.join(SHAPES_RECIPES)} comparisons")
    return comparison


def scoring_sets(recipe, own_test: tuple, scenes: int, seed: int) -> dict[str, tuple]:
    """The recipe's own test split and `scenes` other-generator scenes, in the recipe's form."""
    other = make_other_scenes(scenes, seed)
    targets = stack_masks(other) if recipe.NAME == "segment" else pad_targets(other)
    return {OWN: own_test, OTHER: (stack_images(other), targets)}


def run_directories(folder: Path) -> list[tuple[str, int, Path]]:
    """(row name, seed, path) of every full-budget end-to-end run: OUT/end-to-end*/seed-S."""
    found = []
    for path in sorted(p for p in folder.glob(f"{END_TO_END}*/seed-*") if RUN_FOLDER.fullmatch(p.name)):
        try:
            variant = json.loads((path / "config.json").read_text()).get("variant")
        except (OSError, ValueError):
            raise UsageError(f"{path} is not a run directory (no readable config.json); remove it") from None
        found.append((END_TO_END if variant is None else f"{END_TO_END}: {variant}", int(path.name[5:]), path))
    return found


def score_run(path: Path, sets: dict[str, tuple]) -> dict[str, dict[str, float]]:
    recipe, model, classes = load_trained(path)
    predictor = ModelPredictor(recipe, model, classes=classes, batch_size=64)
    return {name: score(recipe, predictor.predict(inputs), targets) for name, (inputs, targets) in sets.items()}


def staged(recipe, seed: int, train: tuple, sets: dict[str, tuple], log) -> dict[str, dict]:
    """Each staged pipeline refitted once (compare does not save them) and scored on both sets; a
    pipeline whose own code raises gets {"failed": one line} as its scores, as in compare."""
    pipelines = {}
    for name, pipeline in recipe.staged_pipelines(seed).items():
        log(f"fitting staged pipeline {name} (seed {seed}, {len(train[1])} training scenes) and scoring it ...")
        try:
            fit_staged(pipeline, *train)
            scores = {test: score(recipe, predict_staged(pipeline, inputs), targets)
                      for test, (inputs, targets) in sets.items()}
        except UsageError:
            raise
        except Exception as error:  # noqa: BLE001 - a pipeline may fail on scenes it was not built for
            scores = {"failed": one_line(error)}
        pipelines[name] = {"kind": "staged", "seeds": {seed: scores}}
    return pipelines


def measure(folder: Path, comparison: dict, args: argparse.Namespace, log=print) -> dict:
    """{"recipe", "metric", "pipelines": {row: {"kind", "seeds": {seed: {set: scores}}, means}}}."""
    recipe, small = get_recipe(comparison["recipe"]), bool(comparison.get("small", False))
    runs = run_directories(folder)
    if not runs and args.no_staged:
        raise UsageError(f"{folder} holds no end-to-end run directory (end-to-end*/seed-S) and --no-staged was given")
    data = recipe.load_data(small)  # the split compare trained and scored on
    sets = scoring_sets(recipe, data.test, args.scenes, args.seed)
    log(f"{folder}: {recipe.NAME} on " + ", ".join(f"{name} ({len(pair[1])} scenes)" for name, pair in sets.items()))
    pipelines: dict[str, dict] = {}
    if not args.no_staged:
        train = (data.train[0][:args.train_limit], data.train[1][:args.train_limit])
        pipelines = staged(recipe, comparison.get("seeds", [0])[0], train, sets, log)
    for name, seed, path in runs:
        log(f"scoring {name} (seed {seed}, {path}) ...")
        pipelines.setdefault(name, {"kind": "end-to-end", "seeds": {}})["seeds"][seed] = score_run(path, sets)
    order = [row["pipeline"] for row in comparison.get("rows", [])]
    ordered = sorted(pipelines, key=lambda name: order.index(name) if name in order else len(order))
    return {"recipe": recipe.NAME, "metric": recipe.METRIC, "small": small, "scenes": args.scenes,
            "other_seed": args.seed, "pipelines": {name: summarise(pipelines[name], recipe.METRIC) for name in ordered}}


def summarise(pipeline: dict, metric: str) -> dict:
    """The pipeline plus the metric's mean and std over seeds per test set, and their difference."""
    runs = [scores for scores in pipeline["seeds"].values() if "failed" not in scores]
    if not runs:
        return pipeline
    summary = {name: dict(zip(("mean", "std"), mean_std([run[name][metric] for run in runs]))) for name in (OWN, OTHER)}
    return {**pipeline, **summary, "difference": summary[OTHER]["mean"] - summary[OWN]["mean"]}


def table(result: dict) -> Table:
    metric = result["metric"]
    grid = Table(title=f"{result['recipe']}: {metric} on its own test split vs {result['scenes']} scenes of "
                       f"another generator (seed {result['other_seed']})")
    for column in ("pipeline", f"{metric} on own test", f"{metric} on other generator", "difference"):
        grid.add_column(column, justify="left" if column == "pipeline" else "right")
    for name, row in result["pipelines"].items():
        if "difference" not in row:
            failed = next(iter(row["seeds"].values())).get("failed", "failed")
            grid.add_row(name, f"failed: {failed}", "", "")
            continue
        cells = [f"{row[s]['mean']:.4f}" + (f" ± {row[s]['std']:.4f}" if len(row["seeds"]) > 1 else "")
                 for s in (OWN, OTHER)]
        grid.add_row(name, *cells, f"{row['difference']:+.4f}")
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, metavar="COMPARE_OUT", help="--out folders of e2e compare")
    parser.add_argument("--scenes", type=int, default=500, help="other-generator scenes to score on (default 500)")
    parser.add_argument("--seed", type=int, default=13, help="the other generator's seed (default 13)")
    parser.add_argument("--no-staged", action="store_true", help="score only the saved end-to-end runs")
    parser.add_argument("--train-limit", type=int, default=None, metavar="N",
                        help="for smoke tests: fit staged pipelines on the first N training items")
    args = parser.parse_args()
    if args.scenes < 1 or (args.train_limit is not None and args.train_limit < 1):
        parser.error(f"--scenes and --train-limit must be positive, got {args.scenes} and {args.train_limit}")
    try:
        comparisons = [read_comparison(folder) for folder in args.folders]  # every folder checked first
        for folder, comparison in zip(args.folders, comparisons):
            result = measure(folder, comparison, args, log=lambda line: print(line, flush=True))
            (folder / "other_generator.json").write_text(json.dumps(result, indent=2))
            Console(width=max(140, Console().width)).print(table(result))  # rows unwrapped in logs
            print(f"wrote {folder / 'other_generator.json'}")
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
