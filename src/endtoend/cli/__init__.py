"""`e2e`: the command line. Argv and printing only, one handler per verb; the work is done by
endtoend.recipes.run (train, compare, demo, lr-find), endtoend.recipes.predict (predict) and
endtoend.cli.audit (audit).

Bad input gets one line on stderr and exit code 2, before anything trains or is written;
Ctrl-C gets one line saying what was left behind, and exit code 130.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from endtoend.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints the whole usage block
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(minimum: int, what: str, below: int | None = None):
    """An argparse type: an integer >= minimum (and < below), with an error that names what
    was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < minimum or (below is not None and value >= below):
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_seed = _int_at_least(0, "non-negative 64-bit", below=2**64)  # torch.manual_seed's range


def _comma_list(text: str) -> list[str]:
    """An argparse type: "a, b,c" -> ["a", "b", "c"]; what the names mean is checked by the verb."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list such as staged,staged+joint,joint, "
                                         f"got {text!r}")
    return names


def _number_list(kind: type, what: str, example: str):
    """An argparse type: "0,1,2" -> [0, 1, 2] of `kind`; the values' range is checked by the verb."""
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} such as {example}, got {text!r}")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="e2e", description="End-to-end training on PyTorch: audit the graph, "
                     "train one model by one loss, and measure it against the staged pipeline.")
    parser.set_defaults(out=None)  # every verb's namespace has `out`: the Ctrl-C message reads it
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True

    verbs.add_parser("recipes", help="list the built-in recipes, one line each").set_defaults(handler=_recipes)

    def recipe_verb(name: str, summary: str, out_default: str, handler, recipe: bool = True,
                    small: bool = True, progress: bool = True) -> argparse.ArgumentParser:
        """A verb that runs a recipe: the arguments every such verb shares."""
        verb = verbs.add_parser(name, help=summary)
        verb.set_defaults(handler=handler)
        if recipe:
            verb.add_argument("recipe", help="a recipe name (see `e2e recipes`) or the path of your own "
                              "recipe file, PATH.py (docs/recipes.md says what it defines)")
        verb.add_argument("--out", type=Path, help=f"output folder (default {out_default})")
        verb.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
        if small:
            verb.add_argument("--small", action="store_true", help="a tiny configuration, for smoke tests")
        if progress:
            verb.add_argument("--no-progress", action="store_true", help="no progress bar")
        return verb

    train = recipe_verb("train", "train a recipe's end-to-end model into a run directory", "runs/RECIPE-TIMESTAMP",
                        _train)
    train.add_argument("--variant", metavar="NAME", help="train one of the recipe's other end-to-end models "
                       "(its variants(), e.g. detect's \"YOLO-style grid head\") instead of its main one")
    train.add_argument("--epochs", type=_positive_int, help="epochs (default: the recipe's); may be raised on --resume")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest intact checkpoint")
    train.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS",
                       help="also checkpoint every STEPS steps (always at each epoch end)")
    train.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                       help="train in N processes on this machine (torchrun, DistributedDataParallel; the "
                       "recipe's batch size stays the global batch); prints the torchrun line for clusters")
    train.add_argument("--shard", action="store_true",
                       help="with --nproc N (or under torchrun): shard parameters, gradients and optimizer state "
                       "over the processes (FSDP, fit(shard=True)) instead of a full copy in each (DDP)")

    compare = recipe_verb("compare", "train the staged pipelines and the end-to-end model; compare",
                          "runs/RECIPE-TIMESTAMP", _compare)
    for verb in (train, compare):
        verb.epilog = ("A recipe's own options follow as --NAME VALUE (`e2e recipes` lists them), e.g. "
                       "`e2e compare drive --eval-seed 777 --tracks 10`.")
    compare.add_argument("--regimes", type=_comma_list, metavar="LIST",
                         help="also train the recipe's pipeline under these regimes, e.g. staged,staged+joint,joint")
    compare.add_argument("--seeds", type=_number_list(int, "integers", "0,1,2"), metavar="LIST",
                         help="train every pipeline once per seed; rows show the mean and std (default: --seed)")
    compare.add_argument("--budgets", type=_number_list(float, "fractions", "0.1,0.25,0.5,1.0"), metavar="LIST",
                         help="also train on these fractions of the training set: learning curves and the crossover")

    demo = recipe_verb("demo", "e2e compare mnist5k: HOG pipelines vs a CNN from pixels", "runs/mnist5k-TIMESTAMP",
                       _compare, recipe=False, small=False)
    demo.set_defaults(recipe="mnist5k", small=False, regimes=None, seeds=None, budgets=None)
    recipe_verb("lr-find", "learning-rate finder: exponential sweep, plot, suggested value",
                "runs/RECIPE-lr-find-TIMESTAMP", _lr_find, progress=False)

    predict = verbs.add_parser("predict", help="run a trained end-to-end model on raw files (RUN_DIR INPUT...)")
    predict.set_defaults(handler=_predict)
    predict.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                         help="a finished run directory (e2e train --out, or OUT/end-to-end/seed-0 of e2e compare)")
    predict.add_argument("inputs", nargs="*", metavar="INPUT", help="raw input files, e.g. PNG images")
    predict.add_argument("--text", action="append", default=[], metavar="TEXT",
                         help="an input given as text on the command line (recipes with read_text, such as "
                         "translate: --text 'four hundred and two'); may be repeated")
    predict.add_argument("--json", action="store_true", help="print a JSON list of {input, ...prediction} (without "
                         "it, recipes that save predictions as files, such as segment's masks, write them beside "
                         "each input, never over an existing file)")

    new_recipe = verbs.add_parser("new-recipe", help="write a commented, working recipe file to start from")
    new_recipe.set_defaults(handler=_new_recipe)
    new_recipe.add_argument("path", type=Path, metavar="PATH.py", help="the file to write (must not exist)")

    audit = verbs.add_parser("audit", help="find every gradient cut in a model (PATH.py:FACTORY or RECIPE)")
    audit.set_defaults(handler=_audit)
    audit.add_argument("target", metavar="PATH.py:FACTORY|RECIPE",
                       help="a Python file and a function in it returning (model, inputs) or (model, inputs, "
                       "loss_fn, targets); or a recipe (name or PATH.py): its model and loss on 8 training items")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


# --- one handler per verb: argv in, printing out -------------------------------------------

def _recipes(args: argparse.Namespace) -> int:
    from endtoend.recipes import RECIPES, get_recipe

    for name in sorted(RECIPES):
        recipe = get_recipe(name)
        print(f"{name:10s} {recipe.DESCRIPTION}")
        for option, (default, text) in getattr(recipe, "OPTIONS", {}).items():
            print(f"{'':10s}   --{option.replace('_', '-')} (default {default}): {text}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from endtoend.cli.audit import run_audit_command

    return run_audit_command(args.target, as_json=args.json)


def _train(args: argparse.Namespace) -> int:
    from endtoend.recipes import get_recipe, run

    if args.resume and args.out is None:
        raise UsageError("--resume needs --out: the run directory to continue")
    from endtoend.train.distributed import world

    rank, world_size = world()
    under_torchrun = world_size > 1
    if args.nproc > 1 and not under_torchrun:
        return _launch_processes(args)
    if under_torchrun and args.out is None:
        raise UsageError("under torchrun give --out: every process must write to (and resume from) the same folder")
    recipe = get_recipe(args.recipe)
    args.out = _writable_out(args.out or _default_out(recipe.NAME))
    options = run.recipe_options(recipe, args.options)
    trained = run.train_recipe(recipe, args.out, seed=args.seed, small=args.small, epochs=args.epochs,
                               resume=args.resume, checkpoint_every=args.checkpoint_every,
                               progress=not args.no_progress, variant=args.variant, options=options,
                               **({"shard": True} if args.shard else {}))
    if rank == 0:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in trained.metrics.items())
        print(f"{recipe.NAME}: {shown}\nrun directory: {args.out}")
    return 0


def _launch_processes(args: argparse.Namespace) -> int:
    """`e2e train ... --nproc N`: the same command under torchrun on this machine (every process
    runs it; fit joins them), with --out fixed first so that every process writes the same folder."""
    from endtoend.recipes import get_recipe

    args.out = _writable_out(args.out or _default_out(get_recipe(args.recipe).NAME))
    words, rest = list(args.argv), []
    while words:  # the command line without --nproc and --out; --out is added, resolved
        word = words.pop(0)
        if word in ("--nproc", "--out"):
            words.pop(0)
        elif not word.startswith(("--nproc=", "--out=")):
            rest.append(word)
    rest += ["--out", str(args.out)]
    module = ["-m", "endtoend.cli", *rest]
    line = " ".join(shlex.quote(w) for w in module)
    print(f"launching {args.nproc} processes: torchrun --standalone --nproc-per-node {args.nproc} {line}\n"
          f"on a cluster, on each of M nodes: torchrun --nnodes M --node-rank R --rdzv-backend c10d "
          f"--rdzv-endpoint HOST:29500 --nproc-per-node GPUS {line}", flush=True)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(args.nproc), *module])
    if done.returncode:
        print(f"error: training in {args.nproc} processes failed (exit {done.returncode}); the failing process's "
              f"error is above; checkpoints in {args.out} are intact (resume with --resume)", file=sys.stderr)
        return 2 if done.returncode > 0 else 130
    return 0


def _compare(args: argparse.Namespace) -> int:
    """`e2e compare RECIPE` and `e2e demo` (= compare mnist5k, its defaults set by the parser)."""
    from rich.console import Console

    from endtoend.recipes import get_recipe, run

    recipe = get_recipe(args.recipe)
    regimes = run.check_regimes(recipe, args.regimes) if args.regimes else None
    seeds = run.check_seeds(args.seeds or [args.seed])
    budgets = run.check_budgets(args.budgets) if args.budgets else None
    options = run.recipe_options(recipe, getattr(args, "options", {}))
    args.out = _writable_out(args.out or _default_out(recipe.NAME))
    comparison = run.compare_recipe(recipe, args.out, seeds=seeds, budgets=budgets, small=args.small,
                                    progress=not args.no_progress, regimes=regimes, options=options, log=print)
    # Piped to a file rich would wrap at 80 columns; the table has up to a dozen of them.
    Console(width=None if sys.stdout.isatty() else 160).print(comparison_table(comparison))
    if "crossover" in comparison:
        print(comparison["crossover"]["text"])
    print(f"wrote {args.out / 'comparison.json'} and {args.out / 'report.html'}")  # not rich: paths unwrapped
    return 0


def _predict(args: argparse.Namespace) -> int:
    import json

    from endtoend.recipes.predict import load_trained, one_line_prediction, predict_files

    if not args.inputs and not args.text:
        raise UsageError("e2e predict needs inputs: files (e2e predict RUN a.png) or --text 'a phrase'")
    recipe, model, classes = load_trained(args.run_dir)
    results = predict_files(recipe, model, args.inputs, classes, save=not args.json, texts=args.text)
    if args.json:  # a JSON list, one input per line
        print("[\n" + ",\n".join(f"  {json.dumps(r)}" for r in results) + "\n]")
    else:
        print("\n".join(one_line_prediction(r) for r in results))
    return 0


def _new_recipe(args: argparse.Namespace) -> int:
    from importlib.resources import files

    if args.path.suffix != ".py":
        raise UsageError(f"{args.path}: a recipe file is a Python file; give a name ending in .py")
    if args.path.exists():
        raise UsageError(f"{args.path} already exists; choose another name (nothing was overwritten)")
    text = files("endtoend.recipes").joinpath("template.py").read_text()
    try:
        with open(args.path, "x") as file:  # "x": never overwrite a file that appeared meanwhile
            file.write(text)
    except FileNotFoundError:
        raise UsageError(f"cannot write {args.path}: its folder {args.path.parent} does not exist") from None
    print(f"wrote {args.path}: edit it, then run `e2e compare {args.path}` (the contract: docs/recipes.md)")
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    from endtoend.recipes import get_recipe, run

    recipe = get_recipe(args.recipe)
    args.out = _writable_out(args.out or _default_out(f"{recipe.NAME}-lr-find"))
    result = run.lr_find_recipe(recipe, args.out, seed=args.seed, small=args.small)
    lr = recipe.training(args.small).get("lr")
    uses = (f"the recipe uses {lr:.3g}" if isinstance(lr, (int, float))
            else "the recipe sets no lr, so fit uses its optimizer's default")
    print(f"{recipe.NAME}: suggested lr {result.suggested_lr:.3g} ({uses}); plot: {result.plot_path}")
    return 0


def comparison_table(comparison: dict[str, Any]):
    """comparison.json's rows as a rich Table: the primary metric (mean ± std over seeds), every
    other metric, train time, latency, throughput, size, and probes when there are any."""
    from rich.table import Table

    seeds, rows = comparison["seeds"], comparison["rows"]
    direction = "higher is better" if comparison["higher_is_better"] else "lower is better"
    over = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± std over seeds {','.join(map(str, seeds))}"
    table = Table(title=f"{comparison['recipe']}: test {comparison['metric']} ({direction}; {over})")
    extra = list(dict.fromkeys(m for r in rows for m in r.get("metrics", {}) if m != comparison["metric"]))
    with_probes = any("probes" in r for r in rows)
    columns = ("pipeline", "kind", comparison["metric"], *extra, "train s", "ms/item", "items/s", "parameters") + \
        (("probes",) if with_probes else ())
    for column in columns:
        table.add_column(column, justify="left" if column in ("pipeline", "kind", "probes") else "right")
    for r in rows:
        if r.get("failed"):
            table.add_row(r["pipeline"], r["kind"], f"failed: {r['failed']}", *["-"] * (len(columns) - 3))
            continue
        value = f"{r['value']:.4f}" + (f" ± {r['std']:.4f}" if len(seeds) > 1 else "")
        cells = [r["pipeline"], r["kind"], value, *(f"{r['metrics'].get(m, float('nan')):.4f}" for m in extra),
                 f"{r['train_seconds']:.1f}", _shown(r["predict_ms_per_item"], ".3g"), _shown(r["items_per_second"], ",.0f"),
                 f"{r['parameters']:,}"]
        if with_probes:
            cells.append(", ".join(f"{k} {v:.3f}" for k, v in r.get("probes", {}).items()))
        table.add_row(*cells)
    return table


def _shown(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# --- the edges: the output folder, Ctrl-C --------------------------------------------------

def _default_out(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def _writable_out(out: Path) -> Path:
    """--out must be creatable and writable, checked before any data is loaded or any model
    built; whether an existing --out may be non-empty is the verb's decision."""
    from endtoend.train.rundir import check_writable

    check_writable(out)
    return out


def _interrupted(args: argparse.Namespace | None) -> str:
    """What Ctrl-C left behind, in one line: never a checkpoint that does not exist."""
    out = args.out if args is not None else None
    if out is None or not out.exists():
        return "interrupted; nothing was written"
    if args.verb == "train":
        from endtoend.train.checkpoint import list_checkpoints

        variant = f" --variant {shlex.quote(args.variant)}" if getattr(args, "variant", None) else ""
        options = "".join(f" --{name} {shlex.quote(str(value))}" for name, value in getattr(args, "options", {}).items())
        again = f"e2e train {args.recipe}{' --small' if args.small else ''}{variant}{options} --out {out} --resume"

        found = list_checkpoints(out / "checkpoints")
        if not found:
            return (f"interrupted before the first checkpoint: {out} has nothing to resume from yet; "
                    f"`{again}` starts it anew")
        return (f"interrupted; {out / 'checkpoints'} holds {len(found)} checkpoint(s), the newest {found[-1].name}: "
                f"continue with `{again}`")
    return f"interrupted; {out} is incomplete and `e2e {args.verb}` cannot resume: start again with another --out"


RECIPE_OPTION_VERBS = ("train", "compare")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """argv -> the verb's namespace. `e2e train` and `e2e compare` also take the recipe's own
    options (its OPTIONS, e.g. drive's --eval-seed N): they land in `args.options` as strings,
    checked against the recipe once it is loaded; anything else unknown is an error here."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.options = {}
    if extra:
        pairs = _option_pairs(extra) if args.verb in RECIPE_OPTION_VERBS else None
        if pairs is None:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.options = pairs
    return args


def _option_pairs(extra: list[str]) -> dict[str, str] | None:
    """["--eval-seed", "777", "--tracks=5"] -> {"eval-seed": "777", "tracks": "5"}; None when
    the words are not such pairs."""
    pairs, words = {}, list(extra)
    while words:
        word = words.pop(0)
        if not word.startswith("--") or len(word) < 3:
            return None
        name, equals, value = word[2:].partition("=")
        if not equals:
            if not words or words[0].startswith("--"):
                return None
            value = words.pop(0)
        pairs[name] = value
    return pairs


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = parse(argv)
        return args.handler(args)
    except UsageError as error:  # one line per problem (e2e predict names each bad input)
        for line in str(error).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system mid-run (a full disk, a folder gone): one line, the path
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
