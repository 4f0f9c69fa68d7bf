"""fit under torchrun: 2 processes with gloo on the CPU behave as one process with the same
global batch, only rank 0 writes, a killed 2-process run resumes bit-identically, and a rank
that fails stops the others with its error instead of a hang; the same with shard=True (FSDP),
whose checkpoints are those of an unsharded run."""

import json
import os
import shutil
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
    # the sharded runs train with AdamW, so their checkpoints hold optimizer state to restore
    runs = {"alone": ("plain",), "plain": ("plain",), "killable": ("killable",),
            "alone-adamw": ("plain", "adamw"), "shard": ("plain", "shard", "adamw"),
            "killable-shard": ("killable", "shard", "adamw"), "alone-nan": ("nan", "adamw"),
            "nan-shard": ("nan", "shard", "adamw")}
    return {name: (base / name, run(base / name, *args, processes=1 if name.startswith("alone") else 2))
            for name, args in runs.items()}


@pytest.mark.parametrize("kind, reference", [("plain", "alone"), ("shard", "alone-adamw")])
def test_two_processes_train_the_one_process_model(two, kind, reference):
    # Same global batch of 32, each rank 16 rows, gradients averaged (DDP) or reduce-scattered
    # (FSDP): the same steps up to the order of float sums (about 1e-7 per step); 24 steps
    # stay far inside 1e-4.
    alone, both = weights(two[reference][0]), weights(two[kind][0])
    assert alone.keys() == both.keys()
    for name in alone:
        assert torch.allclose(alone[name], both[name], atol=1e-4), name


@pytest.mark.parametrize("kind, reference", [("plain", "alone"), ("shard", "alone-adamw")])
def test_two_processes_evaluate_as_one_process(two, kind, reference):
    # each rank runs its rows of every val batch (33 and 32 of 65), the outputs are gathered
    # back: the metrics of the whole split, as one process computes them
    alone, both = (json.loads((two[name][0] / "summary.json").read_text())["metrics"] for name in (reference, kind))
    assert alone.keys() == both.keys()
    assert both["val_accuracy"] == alone["val_accuracy"]
    assert both["train_loss"] == pytest.approx(alone["train_loss"], abs=1e-5)  # the ranks' mean, not rank 0's
    assert both["val_loss"] == pytest.approx(alone["val_loss"], abs=1e-5)
    # and rank 0 ran about half of the rows: 33 of each 65-row evaluation, 65 alone
    rows = {name: int((two[name][0] / "eval_rows.txt").read_text()) for name in (reference, kind)}
    assert rows[kind] < 0.6 * rows[reference], rows


def logged(out: Path, split: str) -> dict[tuple[int, str], float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], r["name"]): r["value"] for r in rows if r["split"] == split}


def test_a_sharded_run_logs_the_one_process_layer_norms(two):
    # every rank measures its shards and the squares are summed over ranks: whole-layer norms
    alone, sharded = logged(two["alone-adamw"][0], "grad_norm"), logged(two["shard"][0], "grad_norm")
    assert alone.keys() == sharded.keys() and len(alone) == 3 * 4  # steps 8, 16, 24; 4 tensors
    for key in alone:
        assert sharded[key] == pytest.approx(alone[key], rel=1e-4), key


def test_a_sharded_checkpoint_is_an_unsharded_one(two):
    # the full state gathered on rank 0, in fit's format: the files, names and values of one process
    for file in ("model.safetensors", "optimizer.safetensors"):
        alone = load_file(two["alone-adamw"][0] / "checkpoints" / f"step-{24:08d}" / file)
        fsdp = load_file(two["shard"][0] / "checkpoints" / f"step-{24:08d}" / file)
        assert alone.keys() == fsdp.keys() and len(alone) == (4 if file.startswith("model") else 12)
        for name in alone:
            assert torch.allclose(alone[name], fsdp[name], atol=1e-4), (file, name)
    state = json.loads((two["shard"][0] / "checkpoints" / f"step-{24:08d}" / "state.json").read_text())
    assert state["optimizer_groups"][0]["params"] == [0, 1, 2, 3]


def test_two_processes_from_a_dataloader_match_one(tmp_path):
    run(tmp_path / "one", "loader", processes=1)
    run(tmp_path / "two", "loader")
    alone, both = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in alone:
        assert torch.allclose(alone[name], both[name], atol=1e-4), name
    # Each rank loaded only its own half of every global batch, and together they loaded
    # exactly the rows one process loaded (3 epochs of 256 and the first batch's check).
    one = json.loads((tmp_path / "one" / "loaded-0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"loaded-{rank}.json").read_text()) for rank in (0, 1)]
    assert len(one) == 3 * 256 + 32 and [len(rows) for rows in ranks] == [len(one) // 2] * 2
    assert sorted(ranks[0] + ranks[1]) == sorted(one)
    assert ranks[0][:16] == one[:32:2] and ranks[1][:16] == one[1:32:2]  # rows[rank::2] of each batch


def test_a_rank_loader_refuses_a_last_batch_that_does_not_divide_before_training():
    data = torch.utils.data.TensorDataset(torch.zeros(33, 2), torch.zeros(33))
    with pytest.raises(UsageError, match="a batch of 1 rows does not divide among 2 processes"):
        distributed.rank_loader(torch.utils.data.DataLoader(data, batch_size=8), rank=0, size=2)
    kept = torch.utils.data.DataLoader(data, batch_size=8, drop_last=True, num_workers=1)
    mine = distributed.rank_loader(kept, rank=1, size=2)
    assert distributed.is_rank_loader(mine) and len(mine) == 4 and mine.num_workers == 1
    assert [len(inputs) for inputs, _ in mine] == [4] * 4
    iterable = [(torch.zeros(4, 2), torch.zeros(4))]
    assert distributed.rank_loader(iterable, rank=0, size=2) is iterable  # split after reading instead
    ported = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=0)  # from a hand-written DDP script
    with pytest.raises(UsageError, match="has a DistributedSampler, but fit shares every global batch"):
        distributed.rank_loader(torch.utils.data.DataLoader(data, batch_size=8, sampler=ported), rank=0, size=2)


def test_only_rank_0_writes(two):
    out = two["plain"][0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"], r["name"]) for r in rows]
    assert len(keys) == len(set(keys))  # one writer: no value logged twice
    assert len(list((out / "tb").glob("events.*"))) == 1
    assert json.loads((out / "config.json").read_text())["world_size"] == 2


def test_a_sharded_run_rolls_back_as_one_process_does(two):
    # NaN on rank 1 alone: every rank skips the three steps, then all roll back to the last
    # good state (step 8), gathered on rank 0 and loaded back into every rank's shards
    assert two["alone-nan"][1].endswith("rollbacks 1") and two["nan-shard"][1].endswith("rollbacks 1")
    alone, sharded = weights(two["alone-nan"][0]), weights(two["nan-shard"][0])
    for name in alone:
        assert torch.allclose(alone[name], sharded[name], atol=1e-4), name


def test_a_sharded_run_resumes_in_one_process(tmp_path, two):
    # its checkpoint of step 16 (epoch 2 of 3), the later files removed, resumed unsharded
    shutil.copytree(two["shard"][0], tmp_path / "run")
    for later in ("summary.json", "model.safetensors", f"checkpoints/step-{24:08d}"):
        shutil.rmtree(tmp_path / "run" / later) if later.startswith("checkpoints") else (tmp_path / "run" / later).unlink()
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "run"), "plain", "adamw", "resume"],
                          capture_output=True, text=True, timeout=180, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "written by 2 processes, this run has 1" in done.stderr  # it resumed the sharded checkpoint
    alone, resumed = weights(two["alone-adamw"][0]), weights(tmp_path / "run")
    for name in alone:
        assert torch.allclose(alone[name], resumed[name], atol=1e-4), name


@pytest.mark.parametrize("kind", ["killable", "killable-shard"])
def test_a_killed_two_process_run_resumes_bit_identical(tmp_path, two, kind):
    flags = ["shard", "adamw"] if kind.endswith("shard") else []
    process = subprocess.Popen(TORCHRUN + [str(SCRIPT), str(tmp_path), "killable", *flags], env=ENV,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, deadline = tmp_path / "checkpoints" / f"step-{12:08d}", time.time() + 120
    while not target.exists():
        assert process.poll() is None, "the run ended before the checkpoint appeared"
        assert time.time() < deadline
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks at once
    process.wait()
    assert not (tmp_path / "summary.json").exists()
    assert run(tmp_path, "killable", "resume", *flags) == two[kind][1]


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


def test_shard_refuses_what_it_does_not_support_in_one_line():
    with pytest.raises(UsageError, match=r"shard=True does not support ema= yet .*shard=False"):
        endtoend.fit(mlp(), separable(), shard=True, ema=0.99, progress=False)
    with pytest.raises(UsageError, match="shard must be True or False"):
        endtoend.fit(mlp(), separable(), shard="yes", progress=False)


def test_shard_in_one_process_trains_unsharded(capsys):
    plain = endtoend.fit(mlp(), separable(), epochs=1, audit="off", progress=False)
    sharded = endtoend.fit(mlp(), separable(), epochs=1, audit="off", progress=False, shard=True)
    assert sharded.weights_sha256 == plain.weights_sha256
    assert "nothing to shard over" in capsys.readouterr().err


def test_e2e_train_nproc_2_reports_the_metrics_of_the_model_it_saved(tmp_path):
    # digits has batch-norm: each rank's last step leaves it its own statistics, so the ranks
    # evaluate with rank 0's (the saved model's); its metrics are the saved model's own
    from endtoend.recipes import get_recipe
    from endtoend.recipes.run import end_to_end_model, recipe_data
    from endtoend.train.evaluate import evaluate
    from endtoend.train.metrics import resolve_metrics

    done = subprocess.run([sys.executable, "-m", "endtoend.cli", "train", "digits", "--small", "--nproc", "2",
                           "--out", str(tmp_path), "--no-progress"], capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "config.json").read_text())["world_size"] == 2
    recipe = get_recipe("digits")
    build, settings = end_to_end_model(recipe, True, None)
    model = build()
    model.load_state_dict(weights(tmp_path))
    inputs, targets = recipe_data(recipe, True, {}).val
    alone = evaluate(model, [(inputs, targets)], torch.nn.functional.cross_entropy, resolve_metrics(["accuracy"]))
    reported = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert reported["val_accuracy"] == pytest.approx(alone["accuracy"], abs=1e-9)
    assert reported["val_loss"] == pytest.approx(alone["loss"], abs=1e-5)
