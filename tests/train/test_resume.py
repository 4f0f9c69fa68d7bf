"""Checkpoints: kill-and-resume is exact, corrupt checkpoints fall back, pickles are refused."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from endtoend.errors import UsageError
from endtoend.train.checkpoint import list_checkpoints

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


def test_epochs_may_be_raised_on_resume(tmp_path):
    run_script(tmp_path, "epochs=2")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 2
    run_script(tmp_path, "resume", "epochs=3")
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 24


class _Malicious:
    def __reduce__(self):
        return (os.mkdir, (MARKER,))


MARKER = "/tmp/endtoend-pickle-was-executed"


def test_a_pickle_in_a_checkpoint_is_refused_and_never_executed(tmp_path):
    run_script(tmp_path, "epochs=1")
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    (newest / "model.pt").write_bytes(pickle.dumps(_Malicious()))
    if os.path.exists(MARKER):
        os.rmdir(MARKER)
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "resume"], capture_output=True, text=True)
    assert done.returncode != 0
    assert "pickle" in done.stderr and "model.pt" in done.stderr
    assert not os.path.exists(MARKER)


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
