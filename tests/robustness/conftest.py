"""Fixtures of the robustness suite; the helpers are in robust_helpers.py.

The run folder that resume and corruption cases need is trained ONCE per session
(`base_run`) and copied per case (`run_copy`). The slow subprocess scenarios of
test_signals.py start in the background as soon as collection ends, so they overlap
the in-process cases on the 2 cores.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import endtoend.report
from robust_helpers import SIGNAL_SCENARIOS, build_base_run


@pytest.fixture(autouse=True)
def _single_threaded_no_report(monkeypatch):
    """One torch thread (faster for tiny models on 2 shared cores); no report.html per case."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(endtoend.report, "write_run_report", lambda folder: None)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """{"folder", "weights_sha256", "hashes", "steps"} of the one trained run folder."""
    return build_base_run(tmp_path_factory.mktemp("base") / "run")


@pytest.fixture
def run_copy(tmp_path, base_run) -> Path:
    """A private copy of the base run folder for one case."""
    target = tmp_path / "run"
    shutil.copytree(base_run["folder"], target, symlinks=True)
    return target


_SIGNAL_DIRS: list[Path] = []


def pytest_collection_finish(session):
    """Start test_signals.py's subprocess scenarios now, if any of its cases will run."""
    if session.config.option.collectonly:
        return
    if any(item.nodeid.split("::")[0].endswith("robustness/test_signals.py") for item in session.items):
        from signal_scenarios import start_scenarios

        _SIGNAL_DIRS.append(Path(tempfile.mkdtemp(prefix="e2e-signals-")))
        start_scenarios(_SIGNAL_DIRS[-1], SIGNAL_SCENARIOS)


def pytest_sessionfinish(session, exitstatus):
    """No scenario process outlives the session (an interrupted or failed run included)."""
    from robust_helpers import STARTED_PROCESSES

    for process in STARTED_PROCESSES:
        if process.poll() is None:
            process.kill()
            process.wait()
    for folder in _SIGNAL_DIRS:
        shutil.rmtree(folder, ignore_errors=True)
