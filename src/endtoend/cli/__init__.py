"""`e2e`: the command line. Bad input gets one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from endtoend.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints the whole usage block
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, with an error that names what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_seed = _int_at_least(0, "non-negative")


def _default_out(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="e2e", description="End-to-end training on PyTorch: audit the graph, "
                     "train one model by one loss, and measure it against the staged pipeline.")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True

    verbs.add_parser("recipes", help="list the recipes, one line each")

    def recipe_verb(name: str, summary: str, out_default: str, recipe: bool = True, small: bool = True,
                    progress: bool = True) -> argparse.ArgumentParser:
        """A verb that runs a recipe: the arguments every such verb shares."""
        verb = verbs.add_parser(name, help=summary)
        if recipe:
            verb.add_argument("recipe", help="recipe name (see `e2e recipes`)")
        verb.add_argument("--out", type=Path, help=f"output folder (default {out_default})")
        verb.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
        if small:
            verb.add_argument("--small", action="store_true", help="a tiny configuration, for smoke tests")
        if progress:
            verb.add_argument("--no-progress", action="store_true", help="no progress bar")
        return verb

    train = recipe_verb("train", "train a recipe's end-to-end model into a run directory", "runs/RECIPE-TIMESTAMP")
    train.add_argument("--epochs", type=_positive_int, help="epochs (default: the recipe's); may be raised on --resume")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest intact checkpoint")
    train.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS",
                       help="also checkpoint every STEPS steps (always at each epoch end)")

    compare = recipe_verb("compare", "train the staged pipelines and the end-to-end model; compare",
                          "runs/RECIPE-TIMESTAMP")
    compare.add_argument("--regimes", metavar="LIST",
                         help="also train the recipe's pipeline under these regimes, e.g. staged,staged+joint,joint")

    recipe_verb("demo", "e2e compare mnist5k: HOG pipelines vs a CNN from pixels", "runs/mnist5k-TIMESTAMP",
                recipe=False, small=False)
    recipe_verb("lr-find", "learning-rate finder: exponential sweep, plot, suggested value",
                "runs/RECIPE-lr-find-TIMESTAMP", progress=False)

    audit = verbs.add_parser("audit", help="find every gradient cut in a model (PATH.py:FACTORY)")
    audit.add_argument("target", metavar="PATH.py:FACTORY",
                       help="a Python file and a function in it returning (model, inputs)")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _run(args: argparse.Namespace) -> int:
    from endtoend.recipes import RECIPES, get_recipe

    if args.verb == "recipes":
        for name in sorted(RECIPES):
            print(f"{name:10s} {get_recipe(name).DESCRIPTION}")
        return 0
    if args.verb == "audit":
        from endtoend.cli.audit import run_audit_command

        return run_audit_command(args.target, as_json=args.json)

    from endtoend.recipes.run import compare_recipe, train_recipe

    recipe = get_recipe("mnist5k" if args.verb == "demo" else args.recipe)
    if args.verb == "lr-find":
        from endtoend.train.lr_find import lr_find_recipe

        out = args.out or _default_out(f"{recipe.NAME}-lr-find")
        result = lr_find_recipe(recipe, out, seed=args.seed, small=args.small)
        print(f"{recipe.NAME}: suggested lr {result.suggested_lr:.3g} (the recipe uses "
              f"{recipe.training(args.small)['lr']:.3g}); plot: {result.plot_path}")
        return 0
    if args.verb == "train" and args.resume and args.out is None:
        raise UsageError("--resume needs --out: the run directory to continue")
    out = args.out or _default_out(recipe.NAME)
    progress = not args.no_progress
    if args.verb == "train":
        run = train_recipe(recipe, out, seed=args.seed, small=args.small, epochs=args.epochs,
                           resume=args.resume, checkpoint_every=args.checkpoint_every, progress=progress)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in run.metrics.items())
        print(f"{recipe.NAME}: {shown}\nrun directory: {out}")
        return 0
    regimes = None
    if getattr(args, "regimes", None):
        from endtoend.pipeline import parse_regimes

        regimes = parse_regimes(args.regimes)
    compare_recipe(recipe, out, seed=args.seed, small=getattr(args, "small", False), progress=progress,
                   regimes=regimes)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the newest checkpoint is intact (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
