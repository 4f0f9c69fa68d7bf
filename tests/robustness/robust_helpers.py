"""Helpers of the robustness suite (the reliability issue's promise, case by case).

The promise: a bad input gets one `endtoend.UsageError` whose message is one line naming the
bad value or parameter; the user's own exceptions pass through with their own type; and a
refused or failed call leaves every saved file byte-identical.

Cost: one small run folder is trained once per session (`base_run`) and copied per case;
every model is a 6 -> 8 -> 3 MLP on 48 training rows, one thread, no report.html per case.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import endtoend
import endtoend.report
from endtoend.errors import UsageError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FEATURES, CLASSES = 6, 3
QUICK = dict(epochs=1, batch_size=16, progress=False, audit="off")
# The resumable run every resume/corruption case starts from: 48 rows / 16 = 3 steps per
# epoch, 2 epochs, a checkpoint every step -> steps 4, 5, 6 retained (and the best).
BASE = dict(epochs=2, batch_size=16, lr=1e-2, checkpoint_every=1, progress=False, audit="off", seed=0)


# --- data and models ----------------------------------------------------------------------

def make_data(rows: int = 64, features: int = FEATURES, classes: int = CLASSES, seed: int = 1):
    """Learnable class data: (train 48 rows, val 16 rows) when rows=64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()).clamp(max=classes - 1)
    cut = rows * 3 // 4
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def make_model(features: int = FEATURES, classes: int = CLASSES, hidden: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untrained(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """The refusal came before any optimizer step."""
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the model was trained before the refusal ({changed} changed)"


# --- outcomes -----------------------------------------------------------------------------

def assert_usage_error(excinfo_or_err: Any, *needles: str | tuple[str, ...]) -> str:
    """One UsageError, one line, naming every needle (case-insensitive). Returns the message."""
    err = excinfo_or_err.value if hasattr(excinfo_or_err, "value") else excinfo_or_err
    assert isinstance(err, UsageError), f"expected UsageError, got {type(err).__name__}: {err}"
    message = str(err)
    assert message.strip(), "the UsageError has an empty message"
    assert "\n" not in message, f"message is not one line: {message!r}"
    lowered = message.lower()
    missing = [n for n in needles if not _names(lowered, n)]
    assert not missing, f"message does not name {missing}: {message!r}"
    return message


def _names(lowered: str, needle: str | tuple[str, ...]) -> bool:
    """A needle is a string, or a tuple of strings any one of which will do."""
    options = needle if isinstance(needle, tuple) else (needle,)
    return any(option.lower() in lowered for option in options)


def raises_usage_error(call, *needles: str | tuple[str, ...]) -> str:
    """Run `call()`; it must raise a one-line UsageError naming the needles (any other
    outcome -- accepted, or another exception type -- fails with what actually happened)."""
    try:
        result = call()
    except UsageError as err:
        return assert_usage_error(err, *needles)
    except Exception as err:  # noqa: BLE001 - reported as the actual outcome
        first = (str(err).strip().splitlines() or [""])[0]
        pytest.fail(f"expected UsageError naming {list(needles)}, got {type(err).__name__}: {first[:300]}")
    pytest.fail(f"expected UsageError naming {list(needles)}, but it was accepted (returned {type(result).__name__})")


# --- files --------------------------------------------------------------------------------

def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (and an entry per directory), by relative path."""
    found: dict[str, str] = {}
    if not folder.exists():
        return found
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[rel + "/"] = "dir"
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_same_files(before: dict[str, str], folder: Path, allowed_new: tuple[str, ...] = ()) -> None:
    after = tree_hashes(folder)
    lost = sorted(set(before) - set(after))
    added = sorted(k for k in set(after) - set(before) if not any(k.startswith(a) for a in allowed_new))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (lost or added or changed), f"files differ: lost {lost}, added {added}, changed {changed}"


def verify_checkpoint(folder: Path):
    from endtoend.train import checkpoint as ckpt
    return ckpt.read_checkpoint(folder)


def step_folders(run: Path) -> list[Path]:
    """The retained checkpoints, checkpoints/step-<8 digits>/ (not ones moved aside as corrupt)."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d{8}", p.name))


def resume_base(folder: Path, **changes: Any):
    """fit() as the base run was called, with `changes`, resuming `folder`."""
    train, val = make_data()
    kwargs = dict(BASE, out=folder, resume=True)
    model = changes.pop("model", None) or make_model()
    train = changes.pop("train", train)
    val = changes.pop("val", val)
    kwargs.update(changes)
    return endtoend.fit(model, train, val=val, **kwargs)


def build_base_run(folder: Path) -> dict[str, Any]:
    """Train the base run into `folder` (one thread; report.html is not drawn, to save time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(endtoend.report, "write_run_report", lambda folder: None)
            train, val = make_data()
            run = endtoend.fit(make_model(), train, val=val, out=folder, **BASE)
    finally:
        torch.set_num_threads(threads)
    return {"folder": folder, "weights_sha256": run.weights_sha256, "hashes": tree_hashes(folder),
            "steps": run.steps}


# --- the signal chain: started when collection ends, so it overlaps the in-process cases ---

def e2e_command(*args: str, slow: bool = False) -> list[str]:
    """`e2e ...` as its console script runs it (`python -m endtoend_launcher`, the entry point in
    pyproject.toml), or the same CLI through slow_cli.py (sleeps inside forward and checkpoint
    writes so a signal can land mid-epoch or mid-write deterministically)."""
    if slow:
        return [sys.executable, str(HERE / "slow_cli.py"), *args]
    return [sys.executable, "-m", "endtoend_launcher", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(extra)
    return env


class Background:
    """A thread running a callable once; `result()` waits for it."""

    def __init__(self, target):
        self._target = target
        self._value = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            self._value = self._target()
        except BaseException as err:  # noqa: BLE001 - re-raised in result()
            self._error = err

    def result(self, timeout: float = 300):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the background signal scenario did not finish")
        if self._error is not None:
            raise self._error
        return self._value


SIGNAL_SCENARIOS: dict[str, Background] = {}
STARTED_PROCESSES: list[subprocess.Popen] = []  # killed at session end if still alive


def subprocess_run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO, **kwargs)
