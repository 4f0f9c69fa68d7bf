"""`e2e audit PATH.py:FACTORY` or `e2e audit RECIPE`: load the user's factory by path (or build the
recipe's model, loss and a batch of its data), audit it, print the report."""

from __future__ import annotations

import contextlib
import os
import sys

from torch import nn

from endtoend.audit import audit
from endtoend.errors import UsageError
from endtoend.userfile import import_file, one_line


def load_factory(spec: str) -> tuple:
    """Import `PATH.py:FACTORY` by path, call FACTORY() and return what it returned:
    `(model, inputs)` or `(model, inputs, loss_fn, targets)`, where loss_fn may also be a
    loss name that `fit` accepts ("cross_entropy"; the audit resolves it). Raises UsageError
    (one line) for a bad spec, a missing file, a failed import, a missing or failing
    factory, or a return value of the wrong shape."""
    path, colon, name = spec.rpartition(":")
    if not colon:
        try:
            return recipe_factory(spec)
        except UsageError as error:
            if not spec.endswith(".py") or "no such recipe file" in str(error):
                raise
            raise UsageError(f"audit: {spec} is not a recipe file ({error}); to audit a model in it, give "
                             f"PATH.py:FACTORY, a function returning (model, inputs)") from None
    if not path or not name:
        raise UsageError(f"audit: expected PATH.py:FACTORY or a recipe (a name from `e2e recipes`, or PATH.py), "
                         f"got {spec!r}")
    module = import_file(path, "model file")
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UsageError(f"audit: {path} has no function {name!r}")
    try:
        made = factory()
    except Exception as error:
        raise UsageError(f"audit: {name}() raised {one_line(error)}") from error
    if not (isinstance(made, tuple) and len(made) in (2, 4) and isinstance(made[0], nn.Module)):
        raise UsageError(
            f"audit: {name}() must return (model, inputs) or (model, inputs, loss_fn, targets) "
            f"with model an nn.Module, got {type(made).__name__}"
        )
    return made


def recipe_factory(spec: str, items: int = 8) -> tuple:
    """A recipe's end-to-end model (full size, seed 0) with its training loss and the first
    `items` training items of its small data: what `fit` would differentiate."""
    from endtoend.recipes import get_recipe
    from endtoend.recipes.contract import take
    from endtoend.recipes.run import recipe_data, recipe_training
    from endtoend.train.rng import seed_everything

    recipe = get_recipe(spec)
    inputs, targets = recipe_data(recipe, small=True).train
    first = list(range(min(items, len(targets))))
    seed_everything(0)
    model = recipe.build_model(False)
    loss = recipe_training(recipe, False).get("loss", "cross_entropy")
    return model, take(inputs, first), loss, take(targets, first)


def run_audit_command(spec: str, as_json: bool = False, console=None) -> int:
    """`e2e audit PATH.py:FACTORY [--json]`: print the report; 0 when ok, 1 when not.
    Bad input raises UsageError, which the CLI prints as one line with exit code 2; so does an
    exception from the model's forward or loss here (Python's `audit()` lets it through)."""
    made = load_factory(spec)
    model, inputs = made[0], made[1]
    loss_fn, targets = (made[2], made[3]) if len(made) == 4 else (None, None)
    try:
        report = audit(model, inputs, loss_fn=loss_fn, targets=targets)
    except UsageError:
        raise
    except Exception as error:
        raise UsageError(f"audit: the model's forward or loss raised {one_line(error)}") from error
    try:
        if as_json:
            print(report.to_json())
        else:
            report.render(console or _pipe_safe_console())
        if console is None:
            sys.stdout.flush()  # a pipe's buffer: a closed reader shows here, not at exit
    except BrokenPipeError:
        # `e2e audit ... | head`: the reader has gone; stop writing, quietly.
        if console is None or getattr(console, "file", None) is sys.stdout:
            _stdout_to_devnull()
    return 0 if report.ok else 1


def _pipe_safe_console():
    """A rich Console on stdout whose closed pipe silences it: rich's own handler exits with
    code 1, which would hide the audit's exit code."""
    from rich.console import Console

    class PipeSafeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            _stdout_to_devnull()

    return PipeSafeConsole()


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null so that the interpreter's flush at exit does not raise
    BrokenPipeError again (the recipe of Python's signal documentation)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
