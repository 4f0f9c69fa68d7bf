"""`endtoend.lr_find` with bad parameters: one UsageError line naming the parameter."""

from __future__ import annotations

import math

import pytest
import torch

import endtoend
from robust_helpers import make_data, make_model, raises_usage_error

TRAIN, _ = make_data()
X, Y = TRAIN

CASES = [
    pytest.param(dict(start_lr=0), ("start_lr",), id="start_lr=0"),
    pytest.param(dict(start_lr=-1e-5), ("start_lr",), id="start_lr<0"),
    pytest.param(dict(start_lr=1.0, end_lr=1e-3), ("start_lr", "end_lr"), id="start_lr > end_lr"),
    pytest.param(dict(start_lr=1e-3, end_lr=1e-3), ("start_lr", "end_lr"), id="start_lr == end_lr"),
    pytest.param(dict(end_lr=math.inf), ("end_lr",), id="end_lr=inf"),
    pytest.param(dict(start_lr=math.nan), ("start_lr",), id="start_lr=nan"),
    pytest.param(dict(start_lr="1e-7"), ("start_lr",), id="start_lr='1e-7'"),
    pytest.param(dict(steps=0), ("steps",), id="steps=0"),
    pytest.param(dict(steps=-10), ("steps",), id="steps=-10"),
    pytest.param(dict(steps=2.5), ("steps",), id="steps=2.5"),
    pytest.param(dict(steps=True), ("steps",), id="steps=True"),
    pytest.param(dict(batch_size=0), ("batch_size",), id="batch_size=0"),
    pytest.param(dict(smoothing=1.0), ("smoothing",), id="smoothing=1"),
    pytest.param(dict(train=(X[:0], Y[:0])), ("train",), id="train with 0 rows"),
    pytest.param(dict(loss="xent"), ("xent", "cross_entropy"), id="unknown loss"),
]


@pytest.mark.parametrize("changes, needles", CASES)
def test_bad_lr_find_parameter_is_one_usage_error(changes, needles):
    kwargs = dict(steps=10, batch_size=16)
    kwargs.update(changes)
    train = kwargs.pop("train", TRAIN)
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raises_usage_error(lambda: endtoend.lr_find(model, train, **kwargs), *needles)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "lr_find trained the user's model"


def test_lr_find_out_under_a_file_is_one_usage_error(tmp_path):
    (tmp_path / "afile.txt").write_text("mine\n")
    raises_usage_error(lambda: endtoend.lr_find(make_model(), TRAIN, steps=10, batch_size=16,
                                                out=tmp_path / "afile.txt" / "sub"), "afile.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt"]
