"""Output paths that cannot be written: one UsageError line before any training, nothing written."""

from __future__ import annotations

import os
import shutil

import pytest

import endtoend
from robust_helpers import (QUICK, assert_same_files, assert_untrained, make_data, make_model, params_of,
                            raises_usage_error, resume_base, tree_hashes)

TRAIN, VAL = make_data()


def _fit(out, resume=False, model=None):
    return endtoend.fit(model or make_model(), TRAIN, val=VAL, out=out, resume=resume, **QUICK)


@pytest.mark.parametrize("resume", [pytest.param(False, id="new run"), pytest.param(True, id="resume=True")])
@pytest.mark.parametrize("relative", ["afile.txt/sub", "afile.txt/sub/deeper", "afile.txt"])
def test_out_under_or_at_a_file_is_refused_and_nothing_is_written(tmp_path, relative, resume):
    (tmp_path / "afile.txt").write_text("the user's file\n")
    before = tree_hashes(tmp_path)
    model = make_model()
    weights = params_of(model)
    raises_usage_error(lambda: _fit(tmp_path / relative, resume, model), "afile.txt")
    assert_same_files(before, tmp_path)
    assert_untrained(model, weights)


def _writes_anyway(folder) -> bool:
    """True when this process can write into `folder` despite its mode (root)."""
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return False
    probe.unlink()
    return True


@pytest.mark.parametrize("mode, resume, name", [
    pytest.param(0o555, False, "run", id="a new run under a read-only folder"),
    pytest.param(0o555, True, "", id="resume=True into an empty read-only folder"),
    pytest.param(0o000, False, "run", id="a new run under a folder without permissions"),
])
def test_an_unwritable_out_is_refused_before_training(tmp_path, mode, resume, name):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, mode)
    try:
        if _writes_anyway(locked):
            pytest.skip(f"chmod {mode:o} does not stop writes here (euid {os.geteuid()}): permissions are moot")
        model = make_model()
        weights = params_of(model)
        out = locked / name if name else locked
        raises_usage_error(lambda: _fit(out, resume, model), "locked")
        assert_untrained(model, weights)
        os.chmod(locked, 0o755)
        assert not any(locked.iterdir()), "something was written"
    finally:
        os.chmod(locked, 0o755)


def test_checkpoints_existing_as_a_file_in_a_resumed_folder_is_refused(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "checkpoints").write_text("not a folder\n")
    before = tree_hashes(run_copy)
    model = make_model()
    weights = params_of(model)
    raises_usage_error(lambda: resume_base(run_copy, epochs=3, model=model), "checkpoints")
    assert_same_files(before, run_copy)
    assert_untrained(model, weights)


def test_checkpoints_as_a_file_in_an_otherwise_empty_folder_is_refused(tmp_path):
    folder = tmp_path / "myrun"
    folder.mkdir()
    (folder / "checkpoints").write_text("not a folder\n")
    before = tree_hashes(folder)
    raises_usage_error(lambda: resume_base(folder), ("checkpoints", "myrun"))
    assert_same_files(before, folder)


@pytest.mark.parametrize("out", [pytest.param("/sys/kernel/e2e-robustness-run", id="permission denied even for root"),
                                 pytest.param("/sys/e2e-robustness-run", id="operation not permitted even for root")])
def test_a_path_the_kernel_refuses_is_one_usage_error(out):
    from pathlib import Path

    parent = Path(out).parent
    if not parent.is_dir() or os.access(parent, os.W_OK) and _can_mkdir(Path(out)):
        pytest.skip(f"{parent} is writable or absent on this machine")
    model = make_model()
    weights = params_of(model)
    raises_usage_error(lambda: _fit(Path(out), False, model), "e2e-robustness-run")
    assert_untrained(model, weights)


def _can_mkdir(path) -> bool:
    try:
        path.mkdir()
    except OSError:
        return False
    path.rmdir()
    return True
