"""Corrupt checkpoints: every file is covered by a checksum (state.json included); a corrupt
newest checkpoint costs one warning line and the run falls back to the previous intact one.

The base run ends at step 6 with checkpoints 4, 5, 6 retained. Each case damages step 6 (or
more) in a private copy and resumes with the base run's own arguments: the fallback to step
5 must then retrain step 6 and end with the base run's exact weights (resume is exact), and
afterwards every retained checkpoint verifies and best.json tells the truth.
"""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from endtoend.errors import UsageError
from robust_helpers import (assert_same_files, assert_usage_error, raises_usage_error, resume_base, step_folders,
                            tree_hashes, verify_checkpoint)

NEWEST, PREVIOUS = "step-00000006", "step-00000005"


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_state(change):
    def edit(folder):
        path = folder / "state.json"
        state = json.loads(path.read_text())
        state = change(state)
        path.write_text(json.dumps(state, indent=1))
    return edit


def _set(key, value):
    def change(state):
        state[key] = value
        return state
    return change


def _drop(key):
    def change(state):
        state.pop(key)
        return state
    return change


def _retarget_model_hash(folder):
    """Tamper with the weights and rewrite the model's checksum in state.json to match."""
    import hashlib

    _flip_last_byte(folder / "model.safetensors")
    path = folder / "state.json"
    state = json.loads(path.read_text())
    for key in ("files", "sha256", "checksums"):
        if isinstance(state.get(key), dict) and "model.safetensors" in state[key]:
            state[key]["model.safetensors"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    path.write_text(json.dumps(state, indent=1))


def _empty_folder(folder):
    for path in folder.iterdir():
        path.unlink()


DAMAGE = [
    pytest.param(lambda f: _truncate(f / "model.safetensors"), id="model.safetensors cut in half"),
    pytest.param(lambda f: _truncate(f / "model.safetensors", 0), id="model.safetensors emptied"),
    pytest.param(lambda f: _flip_last_byte(f / "model.safetensors"), id="model.safetensors one byte flipped"),
    pytest.param(lambda f: (f / "model.safetensors").unlink(), id="model.safetensors deleted"),
    pytest.param(lambda f: _truncate(f / "optimizer.safetensors"), id="optimizer.safetensors cut in half"),
    pytest.param(lambda f: _flip_last_byte(f / "optimizer.safetensors"), id="optimizer.safetensors one byte flipped"),
    pytest.param(lambda f: (f / "optimizer.safetensors").unlink(), id="optimizer.safetensors deleted"),
    pytest.param(lambda f: (f / "state.json").unlink(), id="state.json deleted"),
    pytest.param(lambda f: _truncate(f / "state.json"), id="state.json cut in half"),
    pytest.param(lambda f: _truncate(f / "state.json", 0), id="state.json emptied"),
    pytest.param(_edit_state(_set("lr_scale", 1000.0)), id="state.json lr_scale 1 -> 1000"),
    pytest.param(_edit_state(_set("step", "forty")), id="state.json step -> 'forty'"),
    pytest.param(_edit_state(_set("batch_in_epoch", 1)), id="state.json batch_in_epoch 0 -> 1"),
    pytest.param(_edit_state(_set("best_value", -1.0)), id="state.json best_value -> -1"),
    pytest.param(_edit_state(_set("history", [])), id="state.json history emptied"),
    pytest.param(_edit_state(_drop("rng")), id="state.json rng removed"),
    pytest.param(_edit_state(lambda s: [s]), id="state.json is a list"),
    pytest.param(_retarget_model_hash, id="weights tampered and their checksum rewritten"),
    pytest.param(_empty_folder, id="the step folder emptied"),
]


def _lines_naming(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if name in line]


def _check_retained(run) -> None:
    """Every retained checkpoint verifies and best.json points at one, with its value."""
    for folder in step_folders(run):
        try:
            verify_checkpoint(folder)
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"retained checkpoint {folder.name} does not verify: {type(err).__name__}: {err}")
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    best_folder = run / "checkpoints" / f"step-{best['step']:08d}"
    assert best_folder.is_dir(), f"best.json points at a missing checkpoint: {best}"
    saved = verify_checkpoint(best_folder).state
    values = [v for k, v in best.items() if k != "step"]
    assert values and values[0] == saved.get("best_value"), f"best.json {best} disagrees with {best_folder.name}"


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(run_copy, base_run, damage, capfd):
    damage(run_copy / "checkpoints" / NEWEST)
    damaged = tree_hashes(run_copy / "checkpoints" / NEWEST)
    try:
        run = resume_base(run_copy)
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"resume failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    err = capfd.readouterr().err
    named = _lines_naming(err, NEWEST)
    assert len(named) == 1 and re.search(r"corrupt|unreadable|checksum", named[0]), (
        f"expected one warning line naming {NEWEST} as corrupt, got {named or err[-400:]!r}")
    assert run.steps == 6
    assert run.weights_sha256 == base_run["weights_sha256"], (
        "the resumed run did not end where the base run did: it did not resume from the previous checkpoint "
        f"exactly (stderr: {err[-300:]!r})")
    assert (run_copy / "checkpoints" / NEWEST).is_dir(), f"{NEWEST} was not rewritten"
    _check_retained(run_copy)
    aside = [p for p in run_copy.rglob("*corrupt*") if p.is_dir()]
    if aside:  # moved aside rather than replaced: it must be kept as it was found
        assert any(tree_hashes(p) == damaged for p in aside), f"{[p.name for p in aside]} do not hold the damaged files"


@pytest.mark.parametrize("damage", [
    pytest.param(lambda f: _truncate(f / "model.safetensors"), id="two newest: model cut in half"),
    pytest.param(_edit_state(_set("lr_scale", 1000.0)), id="two newest: state.json lr_scale edited"),
])
def test_two_corrupt_checkpoints_fall_back_two_steps(run_copy, base_run, damage, capfd):
    for name in (NEWEST, PREVIOUS):
        damage(run_copy / "checkpoints" / name)
    try:
        run = resume_base(run_copy)
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"resume failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    err = capfd.readouterr().err
    for name in (NEWEST, PREVIOUS):
        assert len(_lines_naming(err, name)) == 1, f"expected one warning line naming {name}, got {err[-400:]!r}"
    assert run.steps == 6 and run.weights_sha256 == base_run["weights_sha256"]
    _check_retained(run_copy)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda f: _truncate(f / "model.safetensors"), id="every checkpoint: model cut in half"),
    pytest.param(_edit_state(_set("lr_scale", 1000.0)), id="every checkpoint: state.json lr_scale edited"),
])
def test_no_intact_checkpoint_is_one_usage_error_and_touches_nothing(run_copy, damage):
    for folder in step_folders(run_copy):
        damage(folder)
    before = tree_hashes(run_copy)
    raises_usage_error(lambda: resume_base(run_copy, epochs=3), "intact")
    assert_same_files(before, run_copy)


def test_a_killed_write_leaves_a_temporary_folder_that_resume_ignores(run_copy):
    """What SIGKILL mid-write leaves: a hidden half-written folder next to intact checkpoints."""
    tmp = run_copy / "checkpoints" / ".tmp-step-00000007-99999"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes((run_copy / "checkpoints" / NEWEST / "model.safetensors").read_bytes()[:50])
    try:
        run = resume_base(run_copy, epochs=3)
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"resume failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    assert run.steps == 9
    _check_retained(run_copy)


def _root_reads_anyway(path) -> bool:
    """True when chmod 000 does not stop this process from reading `path` (root, CAP_DAC_OVERRIDE)."""
    mode = path.stat().st_mode
    os.chmod(path, 0)
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        return True
    except PermissionError:
        return False
    finally:
        os.chmod(path, stat.S_IMODE(mode))


@pytest.mark.parametrize("target", [pytest.param("model.safetensors", id="model.safetensors chmod 000"),
                                    pytest.param("", id="the step folder chmod 000")])
def test_an_unreadable_checkpoint_is_reported_as_unreadable(run_copy, target, capfd):
    path = run_copy / "checkpoints" / NEWEST / target if target else run_copy / "checkpoints" / NEWEST
    if _root_reads_anyway(path):
        pytest.skip(f"chmod 000 does not block reads here (euid {os.geteuid()}): permissions are moot")
    os.chmod(path, 0)
    try:
        try:
            resume_base(run_copy)
        except UsageError as err:  # refusing is acceptable if it names the unreadable checkpoint
            assert_usage_error(err, "unreadable", NEWEST)
            return
        err = capfd.readouterr().err
        named = _lines_naming(err, NEWEST)
        assert len(named) == 1 and "unreadable" in named[0], f"expected one 'unreadable' line, got {err[-400:]!r}"
    finally:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
