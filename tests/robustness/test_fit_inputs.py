"""Bad input to `endtoend.fit`: validated once, before training and before any folder exists.

Each refused case passes `out=` and checks that the folder was never created and that the
model's weights did not move (no optimizer step ran). Accepted conversions must train.
The user's own exceptions must surface with their own type and message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import endtoend
from endtoend import Objective
from robust_helpers import (CLASSES, FEATURES, QUICK, assert_untrained, make_data, make_model, params_of,
                            raises_usage_error)

TRAIN, VAL = make_data()
X, Y = TRAIN
CHOICES_LOSS = ("cross_entropy", "mse", "l1", "bce_with_logits")


def _sgd(m):
    return torch.optim.SGD(m.parameters(), lr=0.1)


def _one_thing(x):
    return x


# Each case: (make(model) -> the fit kwargs to change, needles the one-line message must hold).
# `model` in the returned dict replaces the model; `train`/`val`/`test` replace the splits.
REFUSED = [
    # monitor must name a value that is ever logged
    pytest.param(lambda m: dict(monitor="val_f1"), ("monitor", "val_f1"), id="monitor=val_f1 (never logged)"),
    pytest.param(lambda m: dict(monitor="val_accuracy"), ("monitor", "val_accuracy"),
                 id="monitor=val_accuracy without metrics"),
    pytest.param(lambda m: dict(monitor="val_loss", val=None), ("monitor", "val_loss"), id="monitor=val_loss without val"),
    pytest.param(lambda m: dict(monitor="accuracy", metrics=["accuracy"]), ("monitor", "accuracy"),
                 id="monitor=accuracy (no split prefix)"),
    # stability knobs
    pytest.param(lambda m: dict(clip_norm=0), ("clip_norm",), id="clip_norm=0"),
    pytest.param(lambda m: dict(clip_norm=0.0), ("clip_norm",), id="clip_norm=0.0"),
    pytest.param(lambda m: dict(clip_norm=-1.0), ("clip_norm",), id="clip_norm=-1"),
    pytest.param(lambda m: dict(checkpoint_every=0), ("checkpoint_every",), id="checkpoint_every=0"),
    pytest.param(lambda m: dict(checkpoint_every=-1), ("checkpoint_every",), id="checkpoint_every=-1"),
    pytest.param(lambda m: dict(checkpoint_every=-10), ("checkpoint_every",), id="checkpoint_every=-10"),
    pytest.param(lambda m: dict(rollback_lr_factor=1.5), ("rollback_lr_factor",), id="rollback_lr_factor=1.5"),
    pytest.param(lambda m: dict(rollback_lr_factor=2), ("rollback_lr_factor",), id="rollback_lr_factor=2"),
    pytest.param(lambda m: dict(rollback_lr_factor=0), ("rollback_lr_factor",), id="rollback_lr_factor=0"),
    pytest.param(lambda m: dict(rollback_lr_factor=-0.5), ("rollback_lr_factor",), id="rollback_lr_factor=-0.5"),
    pytest.param(lambda m: dict(max_rollbacks=-1), ("max_rollbacks",), id="max_rollbacks=-1"),
    pytest.param(lambda m: dict(max_rollbacks=-5), ("max_rollbacks",), id="max_rollbacks=-5"),
    pytest.param(lambda m: dict(bad_steps_before_rollback=0), ("bad_steps_before_rollback",),
                 id="bad_steps_before_rollback=0"),
    pytest.param(lambda m: dict(bad_steps_before_rollback=-1), ("bad_steps_before_rollback",),
                 id="bad_steps_before_rollback=-1"),
    # integers that are not integers
    pytest.param(lambda m: dict(batch_size=True), ("batch_size",), id="batch_size=True"),
    pytest.param(lambda m: dict(batch_size=False), ("batch_size",), id="batch_size=False"),
    pytest.param(lambda m: dict(epochs=True), ("epochs",), id="epochs=True"),
    pytest.param(lambda m: dict(epochs=False), ("epochs",), id="epochs=False"),
    pytest.param(lambda m: dict(batch_size=0), ("batch_size",), id="batch_size=0"),
    pytest.param(lambda m: dict(batch_size=-4), ("batch_size",), id="batch_size=-4"),
    pytest.param(lambda m: dict(batch_size=2.5), ("batch_size",), id="batch_size=2.5"),
    pytest.param(lambda m: dict(batch_size="16"), ("batch_size",), id="batch_size='16'"),
    pytest.param(lambda m: dict(batch_size=None), ("batch_size",), id="batch_size=None"),
    pytest.param(lambda m: dict(epochs=0), ("epochs",), id="epochs=0"),
    pytest.param(lambda m: dict(epochs=-1), ("epochs",), id="epochs=-1"),
    pytest.param(lambda m: dict(epochs=1.5), ("epochs",), id="epochs=1.5"),
    pytest.param(lambda m: dict(epochs="1"), ("epochs",), id="epochs='1'"),
    pytest.param(lambda m: dict(early_stopping=0), ("early_stopping",), id="early_stopping=0"),
    pytest.param(lambda m: dict(early_stopping=-2), ("early_stopping",), id="early_stopping=-2"),
    pytest.param(lambda m: dict(log_every=0), ("log_every",), id="log_every=0"),
    pytest.param(lambda m: dict(log_every=-1), ("log_every",), id="log_every=-1"),
    # numbers given as other things
    pytest.param(lambda m: dict(lr="1e-3"), ("lr",), id="lr='1e-3'"),
    pytest.param(lambda m: dict(lr=0), ("lr",), id="lr=0"),
    pytest.param(lambda m: dict(lr=-1e-3), ("lr",), id="lr=-1e-3"),
    pytest.param(lambda m: dict(lr=float("nan")), ("lr",), id="lr=nan"),
    pytest.param(lambda m: dict(seed="abc"), ("seed",), id="seed='abc'"),
    pytest.param(lambda m: dict(seed=2**64), ("seed",), id="seed=2**64"),
    pytest.param(lambda m: dict(seed=1.5), ("seed",), id="seed=1.5"),
    pytest.param(lambda m: dict(weight_decay=-0.1), ("weight_decay",), id="weight_decay=-0.1"),
    pytest.param(lambda m: dict(weight_decay="0.1"), ("weight_decay",), id="weight_decay='0.1'"),
    # objects of the wrong kind
    pytest.param(lambda m: dict(model=lambda x: x), ("model",), id="model=lambda"),
    pytest.param(lambda m: dict(model=_one_thing), ("model",), id="model=a function"),
    pytest.param(lambda m: dict(model=None), ("model",), id="model=None"),
    pytest.param(lambda m: dict(transforms=lambda x: x), ("transforms",), id="transforms=lambda"),
    pytest.param(lambda m: dict(transforms=_one_thing), ("transforms",), id="transforms=a function"),
    pytest.param(lambda m: dict(optimizer=lambda params: "adam"), ("optimizer",), id="optimizer factory returns str"),
    pytest.param(lambda m: dict(optimizer=lambda params: None), ("optimizer",), id="optimizer factory returns None"),
    pytest.param(lambda m: dict(optimizer=lambda params: list(params)), ("optimizer",),
                 id="optimizer factory returns a list"),
    pytest.param(lambda m: dict(optimizer=_sgd(m), lr=1e-3), ("lr",), id="Optimizer instance with lr="),
    pytest.param(lambda m: dict(optimizer=_sgd(m), weight_decay=0.1), ("weight_decay",),
                 id="Optimizer instance with weight_decay="),
    pytest.param(lambda m: dict(optimizer=_sgd(m), loss=Objective({"ce": F.cross_entropy}, weighting="uncertainty")),
                 ("optimizer",), id="Optimizer instance with a learnable Objective"),
    pytest.param(lambda m: dict(loss=Objective({"ce": F.cross_entropy}, weights={"ce": -1.0})), ("weight",),
                 id="Objective with weight -1"),
    pytest.param(lambda m: dict(loss=Objective({"ce": F.cross_entropy, "ce2": F.cross_entropy},
                                               weights={"ce": 1.0, "ce2": -0.5})), ("weight",),
                 id="Objective with one weight -0.5"),
    # flow and metrics that cannot apply
    pytest.param(lambda m: dict(progressive=endtoend.Progressive(resolution={0: 4})), ("resolution", "image"),
                 id="Progressive(resolution=) on tabular data"),
    pytest.param(lambda m: dict(progressive=endtoend.Progressive(resolution={1: 8})), ("resolution", "image"),
                 id="Progressive(resolution=) from epoch 1 on tabular data"),
    pytest.param(lambda m: dict(resolution_schedule={0: 4}), ("resolution_schedule", "Progressive(resolution="),
                 id="the old flat resolution_schedule names its new home"),
    pytest.param(lambda m: dict(progressive=endtoend.Progressive(unfreeze={1: [""]})), ("unfreeze", "epoch 0"),
                 id="Progressive(unfreeze=) that trains nothing in epoch 0"),
    pytest.param(lambda m: dict(metrics=["accuracy"], val=None), ("metrics",), id="metrics without val or test"),
    pytest.param(lambda m: dict(metrics={"acc": lambda o, t: (o.argmax(-1) == t).float().mean()}, val=None),
                 ("metrics",), id="metrics dict without val or test"),
    pytest.param(lambda m: dict(metrics=["mae"]), ("mae",), id="metrics=mae on class logits"),
    # one-shot iterators as evaluation data (they would be empty from the second epoch on)
    pytest.param(lambda m: dict(val=(b for b in [VAL])), ("val",), id="val=a generator"),
    pytest.param(lambda m: dict(test=(b for b in [VAL])), ("test",), id="test=a generator"),
    pytest.param(lambda m: dict(val=iter([VAL])), ("val",), id="val=a list iterator"),
    # empty data
    pytest.param(lambda m: dict(train=DataLoader(TensorDataset(X[:0], Y[:0]), batch_size=16)), ("train",),
                 id="train=an empty DataLoader"),
    pytest.param(lambda m: dict(val=DataLoader(TensorDataset(X[:0], Y[:0]), batch_size=16)), ("val",),
                 id="val=an empty DataLoader"),
    pytest.param(lambda m: dict(train=(X[:0], Y[:0])), ("train",), id="train=0 rows"),
    pytest.param(lambda m: dict(val=(X[:0], Y[:0])), ("val",), id="val=0 rows"),
    pytest.param(lambda m: dict(test=(X[:0], Y[:0])), ("test",), id="test=0 rows"),
    # data that does not fit the model, found before training
    pytest.param(lambda m: dict(val=(torch.randn(16, FEATURES - 1), VAL[1])), ("val",), id="val with 5 features"),
    pytest.param(lambda m: dict(test=(torch.randn(16, FEATURES + 2), VAL[1])), ("test",), id="test with 8 features"),
    # devices
    pytest.param(lambda m: dict(device="mps"), ("mps",), id="device=mps",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    # unknown names list the choices
    pytest.param(lambda m: dict(loss="crossentropy"), ("crossentropy", *CHOICES_LOSS), id="loss=crossentropy"),
    pytest.param(lambda m: dict(metrics=["acc"]), ("acc", "accuracy", "mae"), id="metrics=[acc]"),
    pytest.param(lambda m: dict(schedule="linear"), ("schedule", "linear", "one-cycle", "cosine", "constant"),
                 id="schedule=linear"),
    pytest.param(lambda m: dict(optimizer="rmsprop"), ("rmsprop", "adamw", "adam", "sgd"), id="optimizer=rmsprop"),
    pytest.param(lambda m: dict(precision="fp8"), ("precision", "fp8", "fp32", "bf16", "fp16"), id="precision=fp8"),
    pytest.param(lambda m: dict(audit="strict"), ("audit", "strict", "warn", "error", "off"), id="audit=strict"),
]


def _bad_labels(split: str, value: int):
    """Class-index labels with one value out of [0, CLASSES) in `split`."""
    def make(m):
        source = TRAIN if split == "train" else VAL
        y = source[1].clone()
        y[5] = value
        return {split: (source[0], y)}
    return make


REFUSED += [
    pytest.param(_bad_labels(split, value), (split, ("3", "2")), id=f"{split} label {value} (3 classes)")
    for split, value in (("train", 7), ("train", -1), ("val", 3), ("val", -1), ("test", 7), ("test", -2))
]


def _fit(tmp_path, make, model=None):
    """fit() on the default tiny problem with `make(model)`'s changes, writing tmp_path/run."""
    model = model if model is not None else make_model()
    changes = make(model)
    kwargs = dict(QUICK, val=VAL, out=tmp_path / "run")
    train = changes.pop("train", TRAIN)
    model = changes.pop("model", model)
    kwargs.update(changes)
    return endtoend.fit(model, train, **kwargs)


@pytest.mark.parametrize("make, needles", REFUSED)
def test_bad_argument_is_one_usage_error_before_training_and_before_any_folder(tmp_path, make, needles):
    model = make_model()
    before = params_of(model)
    raises_usage_error(lambda: _fit(tmp_path, make, model), *needles)
    assert not (tmp_path / "run").exists(), "the run folder was created before the input was refused"
    assert_untrained(model, before)


# --- conversions with one obvious meaning: they must train -------------------------------

CONVERTED = [
    pytest.param(lambda m: dict(train=(X.double().numpy(), Y.numpy())), id="float64 numpy train inputs"),
    pytest.param(lambda m: dict(train=(X.double().numpy(), Y.numpy()), val=(VAL[0].double().numpy(), VAL[1].numpy())),
                 id="float64 numpy train and val inputs"),
    pytest.param(lambda m: dict(train=(X.double().numpy(), Y.numpy()), val=(VAL[0].double().numpy(), VAL[1].numpy()),
                                test=(VAL[0].double().numpy(), VAL[1].numpy()), metrics=["accuracy"]),
                 id="float64 numpy inputs in every split"),
    pytest.param(lambda m: dict(train=(X, Y.int())), id="int32 torch labels"),
    pytest.param(lambda m: dict(train=(X.numpy(), Y.numpy().astype(np.int32))), id="int32 numpy labels"),
    pytest.param(lambda m: dict(train=(X, Y.int()), val=(VAL[0], VAL[1].int()), metrics=["accuracy"]),
                 id="int32 labels in train and val"),
    pytest.param(lambda m: dict(batch_size=np.int64(16)), id="batch_size=np.int64(16)"),
    pytest.param(lambda m: dict(epochs=np.int64(1)), id="epochs=np.int64(1)"),
    pytest.param(lambda m: dict(epochs=np.int32(1), batch_size=np.int32(16)), id="np.int32 epochs and batch_size"),
]


@pytest.mark.parametrize("make", CONVERTED)
def test_input_with_one_obvious_meaning_trains(tmp_path, make):
    try:
        run = _fit(tmp_path, make)
    except Exception as err:  # noqa: BLE001 - the actual outcome, in one line
        pytest.fail(f"refused: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    assert run.steps == 3
    assert np.isfinite(run.metrics["train_loss"])


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, CLASSES))

    def forward(self, x):
        return self.net(x)


def _images():
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (48, 1, 8, 8), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, CLASSES, (48,), generator=g)


AMBIGUOUS = [
    # (make, model factory, words the refusal must use instead of "does not fit target shape")
    pytest.param(lambda m: dict(train=(X, Y.float()), val=None), make_model, ("float",),
                 id="float32 class-index labels for cross_entropy"),
    pytest.param(lambda m: dict(train=(X.numpy(), Y.double().numpy()), val=None), make_model, ("float",),
                 id="float64 numpy class-index labels for cross_entropy"),
    pytest.param(lambda m: dict(train=_images(), val=None), TinyConv, ("uint8",), id="uint8 images"),
    pytest.param(lambda m: dict(train=(X, F.one_hot(Y, CLASSES)), val=None), make_model,
                 (("one-hot", "one_hot", "onehot", "int64", "long", "argmax"),), id="int64 one-hot labels"),
    pytest.param(lambda m: dict(train=(X, F.one_hot(Y, CLASSES).float()), val=None), make_model,
                 (("one-hot", "one_hot", "onehot", "float", "probabilit"),), id="float one-hot labels"),
]


@pytest.mark.parametrize("make, model_factory, words", AMBIGUOUS)
def test_dtype_with_a_likely_meaning_is_converted_or_named(tmp_path, make, model_factory, words):
    """Either it trains (converted, with an obvious meaning) or the one line names the dtype
    and the fix -- not "does not fit target shape", which sends the user to the wrong place."""
    try:
        run = _fit(tmp_path, make, model_factory())
    except endtoend.UsageError as err:
        message = str(err)
        assert "does not fit" not in message, f"misleading message: {message!r}"
        from robust_helpers import assert_usage_error
        assert_usage_error(err, *words)
        assert not (tmp_path / "run").exists()
        return
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    assert run.steps == 3 and np.isfinite(run.metrics["train_loss"])


SHAPE_MISMATCH = [
    pytest.param(lambda m: dict(loss="mse", train=(X, torch.randn(48, 5)), val=None),
                 id="mse: 3 outputs vs (N, 5) targets"),
    pytest.param(lambda m: dict(loss="mse", train=(X, torch.randn(48)), val=None, model=make_model(classes=1)),
                 id="mse: (N, 1) outputs vs (N,) targets (would broadcast)"),
    pytest.param(lambda m: dict(train=(X, torch.randint(0, CLASSES, (48, 2))), val=None),
                 id="cross_entropy: (N, 3) outputs vs (N, 2) class indices"),
]


@pytest.mark.parametrize("make", SHAPE_MISMATCH)
def test_a_real_shape_mismatch_says_does_not_fit(tmp_path, make):
    raises_usage_error(lambda: _fit(tmp_path, make), "does not fit")
    assert not (tmp_path / "run").exists()


# --- the user's own exceptions pass through unchanged --------------------------------------

class MyError(Exception):
    """The user's own exception type."""


def _raise_on_call(number: int, error: Exception):
    calls = {"n": 0}

    def maybe_raise():
        calls["n"] += 1
        if calls["n"] >= number:
            raise error
    return maybe_raise


class RaisingModel(nn.Module):
    def __init__(self, hook):
        super().__init__()
        self.inner = make_model()
        self.hook = hook

    def forward(self, x):
        self.hook()
        return self.inner(x)


class RaisingTransform(nn.Module):
    def __init__(self, hook):
        super().__init__()
        self.hook = hook

    def forward(self, x):
        self.hook()
        return x


def _in_forward(number, error):
    return lambda: dict(model=RaisingModel(_raise_on_call(number, error)))


def _in_loss(number, error):
    hook = _raise_on_call(number, error)

    def loss(outputs, targets):
        hook()
        return F.cross_entropy(outputs, targets)
    return lambda: dict(loss=loss)


def _in_transforms(number, error):
    return lambda: dict(transforms=RaisingTransform(_raise_on_call(number, error)))


def _in_metric(number, error):
    hook = _raise_on_call(number, error)

    def my_metric(outputs, targets):
        hook()
        return (outputs.argmax(-1) == targets).float().mean()
    return lambda: dict(metrics={"mine": my_metric})


USER_ERRORS = [
    pytest.param(_in_forward, 1, MyError, id="MyError in forward, first call"),
    pytest.param(_in_forward, 3, MyError, id="MyError in forward, third call"),
    pytest.param(_in_forward, 1, ValueError, id="ValueError in forward, first call"),
    pytest.param(_in_loss, 1, MyError, id="MyError in loss, first call"),
    pytest.param(_in_loss, 3, MyError, id="MyError in loss, third call"),
    pytest.param(_in_loss, 1, KeyError, id="KeyError in loss, first call"),
    pytest.param(_in_transforms, 1, MyError, id="MyError in transforms, first call"),
    pytest.param(_in_transforms, 3, MyError, id="MyError in transforms, third call"),
    pytest.param(_in_metric, 1, MyError, id="MyError in a metric, first call"),
]


@pytest.mark.parametrize("where, number, error_type", USER_ERRORS)
def test_the_users_own_exception_passes_through_with_its_type(tmp_path, where, number, error_type):
    raised = error_type("the user's own message")
    changes = where(number, raised)()
    kwargs = dict(QUICK, val=VAL)
    model = changes.pop("model", make_model())
    kwargs.update(changes)
    try:
        endtoend.fit(model, TRAIN, **kwargs)
    except BaseException as err:  # noqa: BLE001
        assert type(err) is error_type, (
            f"the user's {error_type.__name__} surfaced as {type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
        assert err is raised or str(err) == str(raised)
        return
    pytest.fail(f"the user's {error_type.__name__} was swallowed: fit returned normally")
