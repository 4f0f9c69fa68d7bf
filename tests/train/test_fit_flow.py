"""fit's training flow, each by its effect: early stopping restores the best weights, the
curriculum orders the data, progressive resizing and unfreezing change the input size and the
trainable set on schedule, and a resumed run sees the same flow as an uninterrupted one.

Tiny models on one thread; report.html is not drawn.
"""

import functools
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import endtoend
from endtoend import Curriculum, Progressive
from endtoend.train.flow import curriculum_competence
from toys import mlp, separable

QUIET = {"progress": False, "audit": "off", "batch_size": 16, "device": "cpu"}  # exact comparisons: CPU


pytestmark = pytest.mark.usefixtures("one_thread_and_no_report")  # tests/train/conftest.py


def toy(n=64, seed=0):  # 64 rows, batch 16: 4 steps an epoch
    return separable(n, seed)


mlp = functools.partial(mlp, 16, 16)


class Recorder(nn.Module):
    """Wraps a model; records, at each training forward, the inputs and the weights it runs with."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.inputs, self.weights, self.eval_shapes = [], [], []

    def forward(self, x):
        if self.training:
            self.inputs.append(x.detach().clone())
            self.weights.append({k: v.detach().clone() for k, v in self.inner.state_dict().items()})
        else:
            self.eval_shapes.append(tuple(x.shape[-2:]))
        return self.inner(x)


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


# --- early stopping ------------------------------------------------------------------------------

def test_early_stopping_stops_and_restores_the_best_weights(tmp_path):
    x, y = toy()
    # validation targets are the opposite of the training ones: every epoch of learning makes
    # val_loss worse, so the first epoch is the best and patience 2 stops after the third
    run = endtoend.fit(mlp(), (x, y), val=(x, 1 - y), epochs=10, lr=1e-2, early_stopping=2, out=tmp_path / "run",
                       **QUIET)
    losses = [record["val_loss"] for record in run.history]
    assert run.stopped_early and run.steps == 12 and len(losses) == 3 and losses[0] < min(losses[1:])
    best = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors"))
    last = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000012" / "model.safetensors"))
    assert same(run.model.state_dict(), best) and not same(best, last)
    assert json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())["step"] == 4
    assert run.metrics["val_loss"] == pytest.approx(losses[0], abs=1e-6)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["steps"] == 12


@pytest.mark.parametrize("removed", [["step-00000012"], []], ids=["resume-before-the-stop", "resume-after-the-stop"])
def test_early_stopping_with_ema_resumes_to_the_same_best_average(tmp_path, removed):
    x, y = toy()
    settings = dict(val=(x, 1 - y), epochs=10, lr=1e-2, early_stopping=2, ema=0.9, **QUIET)
    whole = endtoend.fit(mlp(), (x, y), out=tmp_path / "whole", **settings)
    assert whole.stopped_early and whole.steps == 12
    # a kill before the last checkpoint (the best average must then come from disk), or after it
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    for name in removed:
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / name)
    (tmp_path / "cut" / "summary.json").unlink()
    resumed = endtoend.fit(mlp(), (x, y), out=tmp_path / "cut", resume=True, **settings)
    assert resumed.stopped_early and resumed.steps == 12 and len(resumed.history) == 3
    assert resumed.weights_sha256 == whole.weights_sha256


# --- curriculum -----------------------------------------------------------------------------------

def with_row_ids(n=64):
    x, y = toy(n)
    x[:, 5] = torch.arange(n, dtype=torch.float32)  # the model can tell which row it sees
    return x, y


def test_curriculum_draws_only_the_easiest_rows_then_widens_to_all():
    x, y = with_row_ids()
    difficulty = torch.rand(64, generator=torch.Generator().manual_seed(3))
    easiest_first = torch.argsort(difficulty).tolist()
    model = Recorder(mlp())
    run = endtoend.fit(model, (x, y), epochs=3, curriculum=Curriculum(difficulty, epochs=2), **QUIET)
    assert run.steps == 12  # an epoch keeps its number of steps: the pool is repeated
    rows = [batch[:, 5].long().tolist() for batch in model.inputs]
    for epoch in range(3):
        # Platanios et al. 2019: c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2)), c0 = 0.25, T = 2
        competence = min(1.0, math.sqrt(epoch * (1 - 0.25**2) / 2 + 0.25**2))
        assert curriculum_competence(epoch, 2) == pytest.approx(competence)
        drawn = [row for batch in rows[4 * epoch:4 * epoch + 4] for row in batch]
        assert set(drawn) == set(easiest_first[:math.ceil(competence * 64)])
    assert len(set(rows[0] + rows[1] + rows[2] + rows[3])) == 16  # epoch 0: the easiest quarter, 4 times over
    assert sorted(row for batch in rows[8:] for row in batch) == list(range(64))  # the ramp is over: each row once

    plain = Recorder(mlp())
    endtoend.fit(plain, (x, y), epochs=1, **QUIET)
    assert sorted(row for batch in plain.inputs for row in batch[:, 5].long().tolist()) == list(range(64))


# --- progressive resizing -------------------------------------------------------------------------

def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def images(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    return x, (x[:, :, :14].mean((1, 2, 3)) > x[:, :, 14:].mean((1, 2, 3))).long()


def test_resolution_schedule_trains_small_first_and_evaluates_at_full_size():
    x, y = images()
    model = Recorder(small_cnn())
    endtoend.fit(model, (x, y), val=(x, y), epochs=3, progressive=Progressive(resolution={0: 14, 2: 28}), **QUIET)
    shapes = [tuple(batch.shape[-2:]) for batch in model.inputs]  # 2 steps an epoch
    assert shapes == [(14, 14)] * 4 + [(28, 28)] * 2
    # the checks before training: train and val rows, then the train rows at each scheduled size
    assert model.eval_shapes[:4] == [(28, 28), (28, 28), (14, 14), (28, 28)]
    assert set(model.eval_shapes[4:]) == {(28, 28)}  # validation and the final metrics: full size


# --- progressive unfreezing -----------------------------------------------------------------------

def test_unfreeze_schedule_trains_only_the_listed_prefixes_from_their_epoch():
    inner = mlp()
    inner[0].requires_grad_(False)  # frozen by the user beforehand: the schedule still unfreezes it
    model = Recorder(inner)
    endtoend.fit(model, toy(), epochs=3, lr=1e-2, weight_decay=0.1,
                 progressive=Progressive(unfreeze={0: ["inner.4."], 1: ["inner.2."], 2: ["inner.0."]}), **QUIET)
    start = [model.weights[0], model.weights[4], model.weights[8], model.inner.state_dict()]
    head, middle, first = {"4.weight", "4.bias"}, {"2.weight", "2.bias"}, {"0.weight", "0.bias"}
    assert changed(start[0], start[1]) == head  # weight decay would move a frozen weight that still had a grad
    assert changed(start[1], start[2]) == head | middle
    assert changed(start[2], start[3]) == head | middle | first
    assert all(p.requires_grad for p in inner.parameters())  # the last epoch's trainable set


# --- resume with the whole flow ----------------------------------------------------------------------

def test_resume_mid_epoch_sees_the_same_curriculum_resolution_and_trainable_set(tmp_path):
    x, y = images()
    difficulty = torch.rand(32, generator=torch.Generator().manual_seed(1))
    settings = dict(epochs=3, curriculum=Curriculum(difficulty, epochs=2),
                    progressive=Progressive(resolution={0: 14, 2: 28}, unfreeze={0: ["6."], 1: [""]}), checkpoint_every=3, lr=1e-2, **QUIET)
    whole = endtoend.fit(small_cnn(), (x, y), out=tmp_path / "whole", **settings)
    # as if killed after step 3 (the middle of epoch 2): resume from there
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    for name in ("step-00000004", "step-00000006"):
        shutil.rmtree(tmp_path / "cut" / "checkpoints" / name)
    (tmp_path / "cut" / "summary.json").unlink()
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 1)
    resumed = endtoend.fit(small_cnn(), (x, y), out=tmp_path / "cut", resume=True, **settings)
    assert resumed.weights_sha256 == whole.weights_sha256
