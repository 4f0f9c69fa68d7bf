"""fit under torchrun: 2 processes with gloo on the CPU behave as one process with the same
global batch, only rank 0 writes, a killed 2-process run resumes bit-identically, and a rank
that fails stops the others with its error instead of a hang."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import endtoend
from endtoend.errors import UsageError
from endtoend.train import distributed
from toys import mlp, separable

SCRIPT = Path(__file__).with_name("ddp_run.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", E2E_DIST_TIMEOUT_S="60")


def run(out: Path, mode: str, *flags: str, processes: int = 2) -> str:
    command = (TORCHRUN if processes == 2 else [sys.executable]) + [str(SCRIPT), str(out), mode, *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    return {"plain": (base / "p", run(base / "p", "plain")), "killable": (base / "k", run(base / "k", "killable"))}


def test_two_processes_train_the_one_process_model(tmp_path, two):
    # Same global batch of 32, each rank 16 rows, gradients averaged: the same SGD steps up to
    # the order of float sums (about 1e-7 per step); 24 steps stay far inside 1e-4.
    run(tmp_path, "plain", processes=1)
    alone, both = weights(tmp_path), weights(two["plain"][0])
    assert alone.keys() == both.keys()
    for name in alone:
        assert torch.allclose(alone[name], both[name], atol=1e-4), name


def test_two_processes_from_a_dataloader_match_one(tmp_path):
    run(tmp_path / "one", "loader", processes=1)
    run(tmp_path / "two", "loader")
    alone, both = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in alone:
        assert torch.allclose(alone[name], both[name], atol=1e-4), name


def test_only_rank_0_writes(two):
    out = two["plain"][0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys))  # one writer: no value logged twice
    assert len(list((out / "tb").glob("events.*"))) == 1
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


def test_a_killed_two_process_run_resumes_bit_identical(tmp_path, two):
    process = subprocess.Popen(TORCHRUN + [str(SCRIPT), str(tmp_path), "killable"], env=ENV, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, deadline = tmp_path / "checkpoints" / f"step-{12:08d}", time.time() + 120
    while not target.exists():
        assert process.poll() is None, "the run ended before the checkpoint appeared"
        assert time.time() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks at once
    process.wait()
    assert not (tmp_path / "summary.json").exists()
    assert run(tmp_path, "killable", "resume") == two["killable"][1]


def test_a_failing_rank_stops_the_others_with_its_error(tmp_path):
    started = time.time()
    done = subprocess.run(TORCHRUN + [str(SCRIPT), str(tmp_path), "raise"], capture_output=True, text=True,
                          timeout=180, env=ENV)
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr
    assert time.time() - started < 60  # torchrun stops rank 0 at once; it does not wait for its timeout


def test_a_global_batch_that_does_not_divide_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UsageError, match="batch_size 33 does not divide among 2 processes"):
        endtoend.fit(mlp(), separable(), batch_size=33, progress=False)


def test_a_batch_is_shared_row_by_row():
    inputs, targets = torch.arange(8).reshape(4, 2), {"y": torch.arange(4)}
    mine = distributed.share((inputs, targets), rank=1, size=2)
    assert mine[0].tolist() == [[2, 3], [6, 7]] and mine[1]["y"].tolist() == [1, 3]
    with pytest.raises(UsageError, match="drop_last=True"):
        distributed.share(torch.arange(5), rank=0, size=2)
