"""Resume rules: what may change on resume, what is refused, and what "nothing to resume" means.

Every case works on a private copy of the one base run (2 epochs of 3 steps, a checkpoint
per step). A refused or no-op resume must leave every file byte-identical.
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

import endtoend
from robust_helpers import (BASE, assert_same_files, assert_usage_error, make_data, make_model, raises_usage_error,
                            resume_base, step_folders, tree_hashes, verify_checkpoint)

(X, Y), VAL = make_data()


def smoothed_cross_entropy(outputs, targets):
    return F.cross_entropy(outputs, targets, label_smoothing=0.1)


def _relabelled():
    y = Y.clone()
    y[0] = (y[0] + 1) % 3
    return y


# --- output-only changes and more epochs: accepted -------------------------------------------

ACCEPTED = [
    pytest.param(dict(epochs=3), id="epochs raised 2 -> 3"),
    pytest.param(dict(epochs=3, progress=True), id="epochs raised, progress=True"),
    pytest.param(dict(epochs=3, log_every=1), id="epochs raised, log_every=1"),
    pytest.param(dict(epochs=3, layer_norms_every=None), id="epochs raised, layer_norms_every=None"),
]


@pytest.mark.parametrize("changes", ACCEPTED)
def test_resume_may_raise_epochs_and_change_output_settings(run_copy, changes):
    try:
        run = resume_base(run_copy, **changes)
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"refused: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    assert run.steps == 9
    records = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"], r["name"]) for r in records]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicated, f"metrics.jsonl logs these twice after the resume: {duplicated[:5]}"
    for folder in step_folders(run_copy):
        verify_checkpoint(folder)


# --- anything that changes the result: refused, naming the field, files untouched -----------

REFUSED = [
    pytest.param(dict(lr=2e-2), ("lr",), id="lr changed"),
    pytest.param(dict(weight_decay=0.1), ("weight_decay",), id="weight_decay changed"),
    pytest.param(dict(batch_size=8), ("batch_size",), id="batch_size changed"),
    pytest.param(dict(seed=1), ("seed",), id="seed changed"),
    pytest.param(dict(model=make_model(hidden=16)), ("model",), id="model changed (wider)"),
    pytest.param(dict(optimizer="sgd"), ("optimizer",), id="optimizer adamw -> sgd"),
    pytest.param(dict(optimizer="adam"), ("optimizer",), id="optimizer adamw -> adam"),
    pytest.param(dict(loss=smoothed_cross_entropy), ("loss",), id="loss changed"),
    pytest.param(dict(schedule="cosine"), ("schedule",), id="schedule one-cycle -> cosine"),
    pytest.param(dict(schedule="constant"), ("schedule",), id="schedule one-cycle -> constant"),
    pytest.param(dict(train=(X + 0.5, Y)), ("data",), id="train data: same shape, other inputs"),
    pytest.param(dict(train=(X, _relabelled())), ("data",), id="train data: one label changed"),
    pytest.param(dict(train=(X.flip(0), Y.flip(0))), ("data",), id="train data: rows reordered"),
    pytest.param(dict(train=(torch.cat([X, X[:16]]), torch.cat([Y, Y[:16]]))), ("data",),
                 id="train data: 64 rows instead of 48"),
]


@pytest.mark.parametrize("changes, needles", REFUSED)
def test_resume_that_would_change_the_result_is_refused_and_touches_nothing(run_copy, changes, needles):
    before = tree_hashes(run_copy)
    raises_usage_error(lambda: resume_base(run_copy, epochs=3, **changes), *needles)
    assert_same_files(before, run_copy)


def _said(capfd, caplog, recwarn) -> str:
    """What the user was told (stderr, logging, warnings), ANSI codes dropped, whitespace joined."""
    text = capfd.readouterr().err + caplog.text + " ".join(str(w.message) for w in recwarn)
    return " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).split())


OUTPUT = [pytest.param(False, id="progress=False"), pytest.param(True, id="progress on a terminal")]


def _output(monkeypatch, terminal: bool) -> dict:
    """progress=False, or progress=True with stderr taken for a terminal (so notes are shown)."""
    if terminal:
        monkeypatch.setattr("rich.console.Console.is_terminal", property(lambda self: True))
        monkeypatch.setenv("COLUMNS", "400")
    return {"progress": terminal}


@pytest.mark.parametrize("terminal", OUTPUT)
@pytest.mark.parametrize("epochs", [pytest.param(1, id="epochs lower than done"),
                                    pytest.param(2, id="epochs equal to done")])
def test_resume_of_a_finished_run_says_already_complete_and_touches_nothing(run_copy, epochs, terminal, monkeypatch,
                                                                            capfd, caplog, recwarn):
    before = tree_hashes(run_copy)
    caplog.set_level(logging.INFO)
    try:
        resume_base(run_copy, epochs=epochs, **_output(monkeypatch, terminal))
    except endtoend.UsageError as err:
        assert_usage_error(err, "already complete at epoch 2")
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    else:
        said = _said(capfd, caplog, recwarn)
        assert "already complete at epoch 2" in said, f"no 'already complete at epoch 2' note; stderr: {said[-300:]!r}"
    assert_same_files(before, run_copy)


# --- resume=True where nothing can be resumed -------------------------------------------------

@pytest.mark.parametrize("terminal", OUTPUT)
@pytest.mark.parametrize("where", [pytest.param("new", id="missing folder"),
                                   pytest.param("a/b/new", id="missing nested folder"),
                                   pytest.param("empty", id="empty folder")])
def test_resume_with_nothing_to_resume_notes_it_and_starts_a_new_run(tmp_path, where, terminal, monkeypatch, capfd,
                                                                      caplog, recwarn):
    folder = tmp_path / where
    if where == "empty":
        folder.mkdir()
    caplog.set_level(logging.INFO)
    try:
        run = resume_base(folder, **_output(monkeypatch, terminal))
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"refused: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    said = _said(capfd, caplog, recwarn)
    assert "no checkpoint under" in said and "starting a new run" in said, (
        f"no 'no checkpoint under DIR: starting a new run' note; got {said[-300:]!r}")
    assert folder.name in said
    assert run.steps == 6 and step_folders(folder)


USER_FILES = [
    pytest.param({"notes.txt": "my notes\n"}, id="a notes file"),
    pytest.param({"data/train.csv": "a,b\n1,2\n"}, id="a data subfolder"),
    pytest.param({"model.py": "print('hi')\n", "README.md": "# mine\n"}, id="a project's files"),
]


@pytest.mark.parametrize("files", USER_FILES)
def test_resume_into_a_folder_of_the_users_other_files_is_refused(tmp_path, files):
    folder = tmp_path / "mine"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = tree_hashes(folder)
    raises_usage_error(lambda: resume_base(folder), "mine")
    assert_same_files(before, folder)


def _only_best_json(run):
    for step in step_folders(run):
        shutil.rmtree(step)


def _only_best_json_alone(run):
    for path in run.iterdir():
        if path.name != "checkpoints":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    _only_best_json(run)


def _empty_checkpoints(run):
    _only_best_json(run)
    (run / "checkpoints" / "best.json").unlink()


@pytest.mark.parametrize("damage", [
    pytest.param(_only_best_json, id="checkpoints/ holds only best.json (logs kept)"),
    pytest.param(_only_best_json_alone, id="the folder holds only checkpoints/best.json"),
    pytest.param(_empty_checkpoints, id="checkpoints/ is empty (logs kept)"),
])
def test_resume_with_no_checkpoint_left_never_mixes_two_runs_in_one_log(run_copy, damage):
    damage(run_copy)
    before = tree_hashes(run_copy)
    old_lines = set((run_copy / "metrics.jsonl").read_text().splitlines()) if (run_copy / "metrics.jsonl").exists() else set()
    try:
        resume_base(run_copy)
    except endtoend.UsageError as err:
        assert_usage_error(err)
        assert_same_files(before, run_copy)
        return
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    new_lines = set((run_copy / "metrics.jsonl").read_text().splitlines())
    mixed = old_lines & new_lines
    assert not mixed or new_lines == old_lines, (
        f"metrics.jsonl now mixes the old run ({len(mixed)} lines) with the new one ({len(new_lines - old_lines)} lines)")
    best = json.loads((run_copy / "checkpoints" / "best.json").read_text())
    assert (run_copy / "checkpoints" / f"step-{best['step']:08d}").is_dir(), f"best.json points nowhere: {best}"


def test_base_run_is_what_the_resume_cases_assume(base_run):
    """Guard for the cases above: 6 steps, checkpoints 4, 5, 6 retained, best.json present."""
    names = [p.name for p in step_folders(base_run["folder"])]
    assert base_run["steps"] == 6 and names[-3:] == ["step-00000004", "step-00000005", "step-00000006"], names
    assert (base_run["folder"] / "checkpoints" / "best.json").exists()
    assert BASE["epochs"] == 2
