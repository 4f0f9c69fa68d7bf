"""Checkpoints: kill-and-resume is exact, corrupt checkpoints fall back, pickles are refused."""

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import shutil

import pytest

import endtoend
from endtoend.errors import UsageError
from endtoend.train.checkpoint import list_checkpoints, read_checkpoint
from toys import mlp, separable

SCRIPT = Path(__file__).with_name("killable_run.py")


def run_script(out: Path, *flags: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), *flags], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def kill_after_checkpoint(out: Path, step: int, *flags: str) -> None:
    """Start a run and SIGKILL it as soon as checkpoint `step` exists (mid-training)."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(out), *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / f"step-{step:08d}"
    deadline = time.time() + 90
    while not target.exists():
        assert process.poll() is None, "the run ended before the checkpoint appeared"
        assert time.time() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL  # really killed, not finished


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    return {"tensors": run_script(base / "t"), "loader": run_script(base / "l", "loader")}


@pytest.mark.parametrize("kill_at", [3, 12, 18])  # epoch 1, end of epoch 2 area, mid epoch 3 (8 steps/epoch)
def test_sigkill_then_resume_gives_identical_weights(tmp_path, uninterrupted, kill_at):
    kill_after_checkpoint(tmp_path, kill_at)
    assert not (tmp_path / "summary.json").exists()
    assert run_script(tmp_path, "resume") == uninterrupted["tensors"]


def test_sigkill_then_resume_with_a_shuffling_dataloader(tmp_path, uninterrupted):
    kill_after_checkpoint(tmp_path, 9, "loader")
    assert run_script(tmp_path, "resume", "loader") == uninterrupted["loader"]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted, capfd):
    kill_after_checkpoint(tmp_path, 15)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    model_file = newest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "corrupt" in line]
    assert len(warnings) == 1 and newest.name in warnings[0]
    assert done.stdout.strip() == uninterrupted["tensors"]


# --- in-process: the rules of resume and of checkpoint files (no kill needed) ----------------

QUIET = {"progress": False, "audit": "off", "batch_size": 16}


def small_run(folder, epochs=2, **changes):
    """4 steps an epoch, a checkpoint every 2 steps; returns the Run."""
    data = changes.pop("data", separable(64, seed=1))
    settings = dict(QUIET, epochs=epochs, checkpoint_every=2, val=separable(32, seed=2), metrics=["accuracy"])
    return endtoend.fit(mlp(8), data, out=folder, **{**settings, **changes})


def hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_epochs_may_be_raised_on_resume(tmp_path):
    small_run(tmp_path, epochs=2)
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2
    run = small_run(tmp_path, epochs=3, resume=True)
    assert run.steps == 12 and json.loads((tmp_path / "summary.json").read_text())["steps"] == 12
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # one run in the log, not two appended


def test_a_pickle_in_a_checkpoint_is_refused_and_never_executed(tmp_path):
    small_run(tmp_path, epochs=1)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    (newest / "model.pt").write_bytes(pickle.dumps(_Malicious()))
    if os.path.exists(MARKER):
        os.rmdir(MARKER)
    with pytest.raises(UsageError, match="pickle.*model.pt"):
        small_run(tmp_path, epochs=2, resume=True)
    assert not os.path.exists(MARKER)


class _Malicious:
    def __reduce__(self):
        return (os.mkdir, (MARKER,))


MARKER = "/tmp/endtoend-pickle-was-executed"


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_best_json_stays_true(tmp_path, capfd):
    small_run(tmp_path, epochs=2)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    (newest / "optimizer.safetensors").write_bytes(b"not a checkpoint")
    run = small_run(tmp_path, epochs=2, resume=True)
    assert "corrupt" in capfd.readouterr().err
    root = tmp_path / "checkpoints"
    assert (root / f"{newest.name}.corrupt" / "optimizer.safetensors").read_bytes() == b"not a checkpoint"
    for folder in list_checkpoints(root):
        read_checkpoint(folder)  # every kept checkpoint verifies, the rewritten newest included
    best = json.loads((root / "best.json").read_text())
    assert (root / f"step-{best['step']:08d}").is_dir()
    assert run.steps == 8


@pytest.mark.parametrize("edit", [{"lr_scale": 1000.0}, {"step": "forty"}, {"history": None}])
def test_an_edited_state_json_is_corrupt_and_the_previous_checkpoint_is_used(tmp_path, capfd, edit):
    small_run(tmp_path, epochs=1)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    state = json.loads((newest / "state.json").read_text())
    (newest / "state.json").write_text(json.dumps({**state, **edit}))
    run = small_run(tmp_path, epochs=2, resume=True)
    assert f"{newest.name} is corrupt (state.json" in capfd.readouterr().err
    assert run.steps == 8


def test_state_json_consistent_with_an_edited_manifest_is_still_refused_when_ill_typed(tmp_path, capfd):
    small_run(tmp_path, epochs=1)
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    state = dict(json.loads((newest / "state.json").read_text()), step="forty")
    (newest / "state.json").write_text(json.dumps(state))
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["state.json"] = hashlib.sha256((newest / "state.json").read_bytes()).hexdigest()
    (newest / "manifest.json").write_text(json.dumps(manifest))
    small_run(tmp_path, epochs=2, resume=True)
    assert "'step' is missing or ill-typed" in capfd.readouterr().err


@pytest.mark.parametrize("field, change", [
    ("lr", {"lr": 5e-3}), ("weight_decay", {"weight_decay": 0.1}), ("train_data", {"data": separable(48, seed=1)}),
    ("seed", {"seed": 1}), ("batch_size", {"batch_size": 8}), ("clip", {"clip": 1.0}), ("schedule", {"schedule": "cosine"}),
])
def test_a_resume_that_would_change_the_result_is_refused_and_touches_nothing(tmp_path, field, change):
    small_run(tmp_path, epochs=1)
    before = hashes(tmp_path)
    with pytest.raises(UsageError, match=f"{field} differs"):
        small_run(tmp_path, epochs=2, resume=True, **change)
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_resume_with_nothing_left_to_train_says_so_and_touches_nothing(tmp_path, capfd, epochs):
    first = small_run(tmp_path, epochs=2)
    before = hashes(tmp_path)
    again = small_run(tmp_path, epochs=epochs, resume=True, progress=True)
    assert "already complete at epoch 2" in capfd.readouterr().err
    assert hashes(tmp_path) == before
    assert again.metrics == json.loads(json.dumps(first.metrics)) and again.weights_sha256 == first.weights_sha256


def test_resume_where_there_is_nothing_to_resume(tmp_path, capfd):
    run = small_run(tmp_path / "typo", epochs=1, resume=True, progress=True)
    assert "no checkpoint under" in capfd.readouterr().err and run.steps == 4
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("my files")
    with pytest.raises(UsageError, match="not a run directory"):
        small_run(other, epochs=1, resume=True)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_a_resume_before_the_first_checkpoint_starts_one_clean_run(tmp_path):
    small_run(tmp_path, epochs=1)
    for folder in list_checkpoints(tmp_path / "checkpoints"):
        shutil.rmtree(folder)            # as if killed before the first checkpoint: only best.json
    (tmp_path / "summary.json").unlink()
    small_run(tmp_path, epochs=1, resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(4) == len([s for s in steps if s == 4])  # no second run appended
    assert len([line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"final_loss"' in line]) == 1


def test_resume_with_another_seed_is_refused_naming_the_field(tmp_path):
    import torch

    import endtoend

    data = (torch.randn(64, 4), torch.randint(0, 2, (64,)))
    model = torch.nn.Linear(4, 2)
    endtoend.fit(model, data, epochs=1, batch_size=16, out=tmp_path, progress=False, audit="off")
    for field, change in (("seed", {"seed": 1}), ("batch_size", {"batch_size": 8})):
        with pytest.raises(UsageError, match=field):
            endtoend.fit(torch.nn.Linear(4, 2), data, **{"epochs": 2, "batch_size": 16, **change},
                         out=tmp_path, resume=True, progress=False, audit="off")
    with pytest.raises(UsageError, match="model"):
        endtoend.fit(torch.nn.Linear(4, 3), data, epochs=2, batch_size=16, out=tmp_path, resume=True,
                     progress=False, audit="off")


def test_a_failed_checkpoint_write_is_one_line_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    small_run(tmp_path, epochs=1)
    before = hashes(tmp_path / "checkpoints")
    import endtoend.train.checkpoint as ckpt

    def full_disk(tensors, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(UsageError, match="could not write the checkpoint of step 6 .*No space left on device"):
        small_run(tmp_path, epochs=2, resume=True)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert hashes(tmp_path / "checkpoints") == before  # the checkpoints already written are intact


def test_a_finished_run_whose_checkpoints_are_gone_is_not_restarted_over(tmp_path):
    small_run(tmp_path, epochs=1)
    shutil.rmtree(tmp_path / "checkpoints")
    before = hashes(tmp_path)
    with pytest.raises(UsageError, match="holds a finished run \\(summary.json\\) but no checkpoint"):
        small_run(tmp_path, epochs=2, resume=True)
    assert hashes(tmp_path) == before
