"""fit's stability features, each by its effect: the non-finite guard and rollback, clipping,
the per-layer norm monitor, EMA, precision, activation checkpointing, exact resume with them on.

Tiny models (64 rows, batch 16: 4 steps an epoch) on one thread; report.html is not drawn.
"""

import copy
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import endtoend
from endtoend import Clipping, Guard
from endtoend.errors import UsageError
from endtoend.train.stability import WeightEMA
from toys import separable

QUIET = {"progress": False, "audit": "off", "batch_size": 16, "device": "cpu"}  # exact comparisons: CPU


pytestmark = pytest.mark.usefixtures("one_thread_and_no_report")  # tests/train/conftest.py


def toy(n=64, seed=0):  # 64 rows, batch 16: 4 steps an epoch
    return separable(n, seed)


class Recorder(nn.Module):
    """A small MLP that records, at each training forward, the weights it runs with, and
    (through post-accumulate hooks) each parameter's gradient before any clipping.
    `nan_gradient_at`: training calls (1-based) whose hidden-layer gradient is made NaN."""

    def __init__(self, seed=0, nan_gradient_at=()):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
        self.nan_gradient_at = set(nan_gradient_at)
        self.weights, self.inputs, self.gradients, self.dtypes = [], [], [], []
        for name, parameter in self.named_parameters():
            parameter.register_post_accumulate_grad_hook(
                lambda p, name=name: self.gradients[-1].__setitem__(name, p.grad.detach().clone()))

    def forward(self, x):
        if not self.training:
            return self.net(x)
        self.weights.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        self.inputs.append(x.detach().clone())
        self.gradients.append({})
        hidden = self.net[1](self.net[0](x))
        if len(self.weights) in self.nan_gradient_at:
            hidden.register_hook(lambda g: g * float("nan"))
        self.dtypes.append(hidden.dtype)
        return self.net[2](hidden)


class NaNLossAt:
    """cross_entropy, multiplied by `factor` (NaN by default) on the chosen training calls."""

    __name__ = "nan_loss_at"

    def __init__(self, bad, factor=float("nan")):
        self.bad = bad if callable(bad) else (lambda call, chosen=set(bad): call in chosen)
        self.factor = factor
        self.calls = 0

    def __call__(self, outputs, targets):
        loss = F.cross_entropy(outputs, targets)
        if not torch.is_grad_enabled():  # evaluation and the first-batch check
            return loss
        self.calls += 1
        return loss * self.factor if self.bad(self.calls) else loss


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records, at each step, the gradients it is given, the lr and the weights after."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.seen, self.lrs, self.after = [], [], []

    def step(self, closure=None):
        self.seen.append([(p.detach().clone(), p.grad.detach().clone())
                          for group in self.param_groups for p in group["params"] if p.grad is not None])
        self.lrs.append(self.param_groups[0]["lr"])
        result = super().step(closure)
        self.after.append([p.detach().clone() for group in self.param_groups for p in group["params"]])
        return result


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def checkpoint_folders(folder):
    return sorted((folder / "checkpoints").glob("step-*"))


def all_checkpoint_tensors_finite(folder):
    for checkpoint in checkpoint_folders(folder):
        for name in ("model.safetensors", "optimizer.safetensors"):
            for tensor in load_file(str(checkpoint / name)).values():
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return False
    return True


def norm(tensors):
    return torch.linalg.vector_norm(torch.stack([t.double().norm() for t in tensors])).item()


# --- the non-finite guard ------------------------------------------------------------------

def test_a_nan_loss_at_one_step_is_skipped_and_every_checkpoint_is_finite(tmp_path):
    model, loss = Recorder(), NaNLossAt({6})
    run = endtoend.fit(model, toy(), loss=loss, epochs=3, out=tmp_path / "run", checkpoint_every=3, log_every=1,
                       **QUIET)
    assert run.steps == 12 and run.skipped_steps == 1 and run.rollbacks == 0
    # step 6 changed nothing: step 7 ran with the weights step 6 ran with; the steps around it did update
    assert same(model.weights[6], model.weights[5])
    assert not same(model.weights[5], model.weights[4]) and not same(model.weights[7], model.weights[6])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records if r["name"] == "skipped_step"] == [6]
    assert 6 not in [r["step"] for r in records if r["name"] == "loss"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["rollbacks"] == 0
    assert len(checkpoint_folders(tmp_path / "run")) >= 3 and all_checkpoint_tensors_finite(tmp_path / "run")


def test_a_nan_gradient_under_a_finite_loss_is_skipped_too():
    model = Recorder(nan_gradient_at={3})
    run = endtoend.fit(model, toy(), loss="cross_entropy", epochs=1, **QUIET)
    assert torch.isnan(model.gradients[2]["net.0.weight"]).all()  # the injected gradient
    assert run.skipped_steps == 1 and same(model.weights[3], model.weights[2])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("guard, factor", [
    (False, float("nan")),  # no guard: the NaN reaches the weights
    (True, 1e22),           # a finite gradient whose square overflows Adam's second moment to Inf
], ids=["nan-without-guard", "adam-state-overflow"])
def test_no_checkpoint_is_written_once_weights_or_optimizer_state_are_non_finite(tmp_path, capfd, guard, factor):
    run = endtoend.fit(Recorder(), toy(), loss=NaNLossAt({5}, factor), epochs=3, guard=guard, out=tmp_path / "run",
                       checkpoint_every=3, **QUIET)
    assert run.skipped_steps == 0
    # checkpoints 3 and 4 came before the poison at step 5; 6, 8, 9 and 12 were refused
    assert [p.name for p in checkpoint_folders(tmp_path / "run")] == ["step-00000003", "step-00000004"]
    assert all_checkpoint_tensors_finite(tmp_path / "run")
    assert "not writing a checkpoint at step 6" in capfd.readouterr().err


def test_consecutive_nan_steps_roll_back_to_the_exact_last_checkpoint_with_a_lower_lr(tmp_path):
    model, loss = Recorder(), NaNLossAt({6, 7, 8})
    opt = {}

    def optimizer(params):
        opt["it"] = RecordingAdamW(params, lr=1e-2)
        return opt["it"]

    run = endtoend.fit(model, toy(), loss=loss, optimizer=optimizer, epochs=3, out=tmp_path / "run", log_every=1,
                       guard=Guard(bad_steps_before_rollback=3, rollback_lr_factor=0.5), **QUIET)
    # epoch 1: step 5 trains, 6-8 are NaN -> back to the epoch-0 checkpoint (step 4), epoch 1 again
    assert run.skipped_steps == 3 and run.rollbacks == 1 and run.steps == 12 and len(model.weights) == 16
    last_good = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000004" / "model.safetensors"))
    after_rollback = model.weights[8]  # the 9th training forward: the first one after the rollback
    assert same(after_rollback, last_good)
    assert torch.equal(model.inputs[8], model.inputs[4])  # the same batch order is replayed
    lr_at_step_5 = [r["value"] for r in metrics(tmp_path / "run") if r["name"] == "lr" and r["step"] == 5]
    assert len(lr_at_step_5) == 2 and lr_at_step_5[1] == pytest.approx(0.5 * lr_at_step_5[0], rel=1e-12)
    assert opt["it"].lrs[5] == pytest.approx(0.5 * opt["it"].lrs[4], rel=1e-12)  # what the optimizer used
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rollbacks"] == 1 and summary["skipped_steps"] == 3
    final_state = json.loads((checkpoint_folders(tmp_path / "run")[-1] / "state.json").read_text())
    assert final_state["lr_scale"] == 0.5


def test_persistent_nan_steps_stop_with_a_usage_error_after_max_rollbacks():
    loss = NaNLossAt(lambda call: call >= 3)
    with pytest.raises(UsageError, match="diverged: 2 rollbacks"):
        endtoend.fit(Recorder(), toy(), loss=loss, epochs=2, guard=Guard(bad_steps_before_rollback=2, max_rollbacks=2), **QUIET)
    # 2 good steps, then 2 NaN steps three times: two rollbacks to the start, the third is refused
    assert loss.calls == 8


# --- clipping --------------------------------------------------------------------------------

def test_clip_norm_bounds_what_the_optimizer_sees_and_logs_the_norm_before_clipping(tmp_path):
    model, opt = Recorder(), {}
    run = endtoend.fit(model, toy(), loss="cross_entropy", epochs=1, clip=0.05, log_every=1,
                       optimizer=lambda params: opt.setdefault("it", RecordingAdamW(params, lr=1e-2)),
                       out=tmp_path / "run", **QUIET)
    logged = {r["step"]: r["value"] for r in metrics(tmp_path / "run") if r["name"] == "grad_norm_before_clip"}
    assert run.steps == 4 and sorted(logged) == [1, 2, 3, 4]
    names = [n for n, _ in model.named_parameters()]
    for step, (before, seen) in enumerate(zip(model.gradients, opt["it"].seen), start=1):
        pre_clip = norm(list(before.values()))
        assert pre_clip > 0.05  # every step needed clipping
        assert logged[step] == pytest.approx(pre_clip, rel=1e-5)
        assert norm([g for _, g in seen]) == pytest.approx(0.05, rel=1e-4)  # rescaled to the bound, not below
        for name, (_, gradient) in zip(names, seen):  # one common factor: the direction is kept
            torch.testing.assert_close(gradient, before[name] * (0.05 / pre_clip), rtol=1e-4, atol=1e-9)


def test_clip_value_bounds_each_element_and_agc_bounds_each_unit(tmp_path):
    for kind, limit in (("value", 0.02), ("agc", 0.01)):
        model, opt = Recorder(), {}
        endtoend.fit(model, toy(), loss="cross_entropy", epochs=1, clip=Clipping(**{kind: limit}),
                     optimizer=lambda params: opt.setdefault("it", RecordingAdamW(params, lr=1e-2)), **QUIET)
        names = [n for n, _ in model.named_parameters()]
        exceeded = False
        for before, seen in zip(model.gradients, opt["it"].seen):
            for name, (weight, gradient) in zip(names, seen):
                if kind == "value":
                    exceeded |= bool(before[name].abs().max() > limit)
                    assert torch.equal(gradient, before[name].clamp(-limit, limit))
                else:  # AGC: ||G_unit|| / max(||W_unit||, 1e-3) <= agc, a unit being an output row
                    dims = tuple(range(1, gradient.ndim)) if gradient.ndim > 1 else None
                    weight_norm = torch.linalg.vector_norm(weight, dim=dims).clamp_min(1e-3)
                    ratio_before = torch.linalg.vector_norm(before[name], dim=dims) / weight_norm
                    ratio_seen = torch.linalg.vector_norm(gradient, dim=dims) / weight_norm
                    exceeded |= bool((ratio_before > limit).any())
                    assert (ratio_seen <= limit * (1 + 1e-4)).all()
                    untouched = ratio_before <= limit  # units under the bound are not scaled
                    assert torch.equal(ratio_seen[untouched], ratio_before[untouched])
        assert exceeded, f"{kind}: no gradient needed clipping, the test would prove nothing"


# --- the per-layer norm monitor ---------------------------------------------------------------

def test_grad_and_weight_norms_are_logged_for_every_parameter_every_n_steps(tmp_path):
    model = Recorder()
    endtoend.fit(model, toy(), loss="cross_entropy", epochs=2, layer_norms_every=3, log_every=100,
                 out=tmp_path / "run", **QUIET)
    names = {n for n, _ in model.named_parameters()}
    records = metrics(tmp_path / "run")
    for split, source in (("grad_norm", model.gradients), ("weight_norm", model.weights)):
        logged = [r for r in records if r["split"] == split]
        assert sorted({r["step"] for r in logged}) == [3, 6]  # 8 steps, every 3rd
        for step in (3, 6):
            at_step = {r["name"]: r["value"] for r in logged if r["step"] == step}
            assert set(at_step) == names
            for name, value in at_step.items():  # the norm of what that step ran with
                assert value == pytest.approx(source[step - 1][name].norm().item(), rel=1e-5)


# --- EMA ---------------------------------------------------------------------------------------

def test_ema_final_weights_are_the_running_average_and_validation_uses_them():
    model, opt = Recorder(), {}
    initial = copy.deepcopy(model)
    x, y = toy()
    val = toy(32, seed=1)
    run = endtoend.fit(model, (x, y), val=val, loss="cross_entropy", epochs=2, ema=0.9,
                       optimizer=lambda params: opt.setdefault("it", RecordingAdamW(params, lr=3e-2)), **QUIET)
    names = [n for n, _ in model.named_parameters()]
    steps = opt["it"].after  # the raw weights after each of the 8 optimizer steps

    # by hand, in float64: e <- d_n e + (1 - d_n) w_n, with the warm-up decay d_n = min(0.9, (1+n)/(10+n))
    average = [p.detach().double().clone() for p in initial.parameters()]
    averages_after = []
    for n, weights in enumerate(steps):
        decay = min(0.9, (1 + n) / (10 + n))
        average = [decay * a + (1 - decay) * w.double() for a, w in zip(average, weights)]
        averages_after.append(average)
    for name, p, expected in zip(names, model.parameters(), average):
        torch.testing.assert_close(p.detach().double(), expected, rtol=0, atol=1e-6, msg=name)
    # ... and bit-exactly what a WeightEMA updated alongside gives
    reference, scratch = WeightEMA(initial, decay=0.9), copy.deepcopy(initial)
    for weights in steps:
        with torch.no_grad():
            for p, w in zip(scratch.parameters(), weights):
                p.copy_(w)
        reference.update(scratch)
    assert all(torch.equal(reference.params[n], p) for n, p in model.named_parameters())

    def val_loss(parameters):
        probe = copy.deepcopy(initial).eval()
        with torch.no_grad():
            for p, w in zip(probe.parameters(), parameters):
                p.copy_(w)
            return F.cross_entropy(probe(val[0]), val[1]).item()

    # each epoch's val_loss is the loss of the average at that epoch's end, not of the raw weights
    for epoch, record in enumerate(run.history):
        assert record["val_loss"] == pytest.approx(val_loss(averages_after[4 * epoch + 3]), abs=1e-5)
        assert abs(record["val_loss"] - val_loss(steps[4 * epoch + 3])) > 1e-3
    assert run.metrics["val_loss"] == pytest.approx(run.history[-1]["val_loss"], abs=1e-6)


# --- precision -----------------------------------------------------------------------------------

def test_precision_auto_is_fp32_on_cpu_fp16_is_refused_and_bf16_autocasts(tmp_path):
    model = Recorder()
    endtoend.fit(model, toy(), loss="cross_entropy", epochs=1, out=tmp_path / "auto", **QUIET)
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["precision"] == "float32"
    assert set(model.dtypes) == {torch.float32}

    with pytest.raises(UsageError, match="fp16.*CUDA"):
        endtoend.fit(Recorder(), toy(), loss="cross_entropy", precision="fp16", **QUIET)

    model = Recorder()
    before = copy.deepcopy(model.state_dict())
    run = endtoend.fit(model, toy(), loss="cross_entropy", precision="bf16", epochs=2, lr=1e-2, **QUIET)
    assert run.config["precision"] == "bfloat16"
    assert set(model.dtypes) == {torch.bfloat16}  # activations computed under autocast
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # fp32 masters
    assert not same(model.state_dict(), before) and run.skipped_steps == 0
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_auto_is_bf16_and_fp16_scales_the_loss_and_survives_a_skipped_step():
    on_gpu = dict(QUIET, device="cuda")
    model = Recorder()
    run = endtoend.fit(model, toy(), loss="cross_entropy", epochs=2, **on_gpu)
    if torch.cuda.is_bf16_supported():
        assert run.config["precision"] == "bfloat16" and set(model.dtypes) == {torch.bfloat16}

    # fp16: a GradScaler scales the loss; a NaN step must be skipped without upsetting it
    model = Recorder()
    run = endtoend.fit(model, toy(), loss=NaNLossAt({3}), precision="fp16", epochs=3, lr=1e-2, clip=1.0,
                       **on_gpu)
    assert run.config["precision"] == "float16" and set(model.dtypes) == {torch.float16}
    assert run.skipped_steps == 1 and run.steps == 12
    assert same(model.weights[3], model.weights[2])  # the NaN step changed nothing
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]


# --- activation checkpointing --------------------------------------------------------------------

class CountingLinear(nn.Linear):
    calls = 0

    def forward(self, x):
        if self.training:
            CountingLinear.calls += 1
        return super().forward(x)


def deep_mlp():
    torch.manual_seed(0)
    return nn.Sequential(CountingLinear(6, 32), nn.Tanh(), CountingLinear(32, 32), nn.Tanh(),
                         CountingLinear(32, 32), nn.Tanh(), CountingLinear(32, 2))


def test_activation_checkpointing_recomputes_blocks_and_gives_identical_weights():
    runs = {}
    for checkpointing in (False, True):
        CountingLinear.calls = 0
        model = deep_mlp()
        run = endtoend.fit(model, toy(), loss="cross_entropy", epochs=2, activation_checkpointing=checkpointing,
                           **QUIET)
        runs[checkpointing] = (run, CountingLinear.calls)
    (plain, plain_calls), (checkpointed, checkpointed_calls) = runs[False], runs[True]
    assert plain_calls == 4 * 8 and checkpointed_calls == 2 * 4 * 8  # each block recomputed in backward
    assert checkpointed.weights_sha256 == plain.weights_sha256
    assert checkpointed.history == plain.history
    # fit leaves the user's blocks as they were: their own forward, no recomputation after it
    assert all("forward" not in vars(block) for block in checkpointed.model.modules())
    CountingLinear.calls = 0
    checkpointed.model(toy()[0]).sum().backward()
    assert CountingLinear.calls == 4


# --- exact resume with the stability features on ---------------------------------------------------

def test_resume_is_exact_with_ema_guard_and_clipping_on(tmp_path):
    settings = dict(loss="cross_entropy", epochs=3, ema=0.9, clip=0.5, checkpoint_every=3, lr=1e-2, **QUIET)
    uninterrupted = endtoend.fit(Recorder(), toy(), out=tmp_path / "whole", **settings)
    # As if killed just before the last checkpoint: resume from step 9, one batch into epoch 3.
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-00000012")
    (tmp_path / "cut" / "summary.json").unlink()
    assert checkpoint_folders(tmp_path / "cut")[-1].name == "step-00000009"
    resumed = endtoend.fit(Recorder(), toy(), out=tmp_path / "cut", resume=True, **settings)
    assert resumed.weights_sha256 == uninterrupted.weights_sha256
    # The epochs before the cut match exactly; the resumed epoch's train_loss counts only the
    # steps since the last logged one (docs/training.md), so it is not compared.
    assert resumed.history[:2] == uninterrupted.history[:2]
    assert resumed.steps == uninterrupted.steps == 12 and math.isfinite(resumed.metrics["train_loss"])
