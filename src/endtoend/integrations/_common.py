"""What the trainer callbacks share: the modes, the one-line error, the printed table, the
logged summary, and putting back what fetching a batch or calling a step touches outside the
model (the model itself is restored by the audit: endtoend/audit/preserve.py)."""

from __future__ import annotations

import contextlib
import importlib
import random
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.train.evaluate import kept_modes  # noqa: F401 - the integrations import it from here

MODES = ("warn", "error")


class AuditError(UsageError):
    """`mode="error"` and the audit of the first batch found an error: one line naming the
    first finding's file and line (the table above it has them all)."""


class MissingExtra(ImportError, UsageError):
    """An integration imported without its framework: one line naming the extra to install.
    An ImportError, so `try: import ... except ImportError` works as usual."""


# Named where users import them from (tracebacks print `endtoend.integrations.AuditError`).
AuditError.__module__ = MissingExtra.__module__ = "endtoend.integrations"


def require(package: str, integration: str) -> ModuleType:
    """Import `package` for `endtoend.integrations.<integration>`, or raise one line saying
    which extra installs it."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        top = package.split(".")[0]
        if error.name in (None, top, package):
            reason = f"{top} is not installed"
        else:  # the framework is there but one of its own imports failed
            reason = f"importing {package} failed ({error})"
        raise MissingExtra(
            f"endtoend.integrations.{integration} needs {top}: {reason}; pip install 'endtoend[{integration}]'"
        ) from None


def check_mode(mode: Any, owner: str) -> str:
    if mode not in MODES:
        raise UsageError(f"{owner}: mode must be 'warn' or 'error', got {mode!r}")
    return mode


def summary_metrics(report) -> dict[str, int]:
    """The numbers a logger gets: errors, warnings, and the trainable parameters that the
    audit says will not learn (gradient None, or dead: exactly zero for a reason training
    will not fix)."""
    starved = set(report.unused_parameters) | set(report.dead_parameters)
    return {
        "audit/errors": sum(f.severity == "error" for f in report.findings),
        "audit/warnings": sum(f.severity == "warning" for f in report.findings),
        "audit/parameters_without_gradient": len(starved),
    }


def show(report) -> None:
    """The findings table when something is worth reading (as `fit` prints it), else the
    one summary line."""
    if any(f.severity != "info" for f in report.findings):
        report.render()
    else:
        print(report.summary(), flush=True)


def error_message(report, owner: str) -> str:
    """One line: how many errors, and the first one (a cut when there is one) at its file and
    line, with the parameters it starves."""
    errors = [f for f in report.findings if f.severity == "error"]
    first = next((f for f in errors if f.kind == "cut"), errors[0])
    what = f"{first.kind} {first.op}" if first.op else first.kind
    where = f" at {first.where}" if first.where else ""
    starved = ""
    if first.parameters:
        names = ", ".join(first.parameters[:4]) + (f" and {len(first.parameters) - 4} more"
                                                   if len(first.parameters) > 4 else "")
        starved = f" ({names} get no gradient)"
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    return (f"the differentiability audit of the first batch found {count}; the first: {what}{where}"
            f"{starved}; fix it (the table above has every finding) or pass {owner}(mode='warn')")


@contextlib.contextmanager
def kept_rng(*holders: Any) -> Iterator[None]:
    """Put back Python's, NumPy's and torch's global RNG states (CUDA too, once initialised),
    and the state of every `torch.Generator` found on `holders` (a DataLoader and its samplers:
    drawing one batch must not change the shuffle training then draws)."""
    generators = _generators(holders)
    saved = [(g, g.get_state()) for g in generators]
    python_state = random.getstate()
    numpy_state = _numpy_random_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(python_state)
        if numpy_state is not None:
            import numpy

            numpy.random.set_state(numpy_state)
        for generator, state in saved:
            generator.set_state(state)


def _numpy_random_state():
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency
        return None
    return numpy.random.get_state()


def _generators(holders) -> list[torch.Generator]:
    found, seen, pending = [], set(), list(holders)
    while pending:
        obj = pending.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Generator):
            found.append(obj)
            continue
        for name in ("generator", "sampler", "batch_sampler", "base_dataloader", "synchronized_generator"):
            with contextlib.suppress(Exception):  # a property that raises is no holder
                pending.append(getattr(obj, name, None))
    return found


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
