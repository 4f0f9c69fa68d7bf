"""`endtoend.audit(model, inputs, loss_fn=..., targets=...)` on bad input: one UsageError line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import endtoend
from robust_helpers import FEATURES, make_model, raises_usage_error

X = torch.randn(8, FEATURES)
Y = torch.randint(0, 3, (8,))


class Returns(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.linear = nn.Linear(FEATURES, 3)
        self.value = value

    def forward(self, x):
        self.linear(x)
        return self.value


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(FEATURES, 3)

    def forward(self, x):
        return self.linear(x)


ROWS = (("0 rows", "zero rows", "no rows", "empty"),)

REFUSED = [
    pytest.param(lambda: (Returns(None), X, {}), ("output", "None"), id="model returns None"),
    pytest.param(lambda: (Returns("hello"), X, {}), ("output", "str"), id="model returns a string"),
    pytest.param(lambda: (Returns(["a", "b"]), X, {}), ("output",), id="model returns a list of strings"),
    pytest.param(lambda: (make_model(), X, {"loss_fn": nn.functional.cross_entropy}), ("targets",),
                 id="loss_fn without targets"),
    pytest.param(lambda: (nn.ReLU(), X, {}), ("parameters",), id="model without parameters (ReLU)"),
    pytest.param(lambda: (nn.Identity(), X, {}), ("parameters",), id="model without parameters (Identity)"),
    pytest.param(lambda: (make_model(), X[:0], {}), ROWS, id="inputs with 0 rows"),
    pytest.param(lambda: (make_model(), X[:0], {"loss_fn": "cross_entropy", "targets": Y[:0]}), ROWS,
                 id="inputs and targets with 0 rows"),
    pytest.param(lambda: (DictModel(), {"x": X[:0]}, {}), ROWS, id="dict inputs with 0 rows"),
    pytest.param(lambda: (make_model(), X, {"loss_fn": "xent", "targets": Y}), ("xent", "cross_entropy"),
                 id="unknown loss name"),
    pytest.param(lambda: (lambda x: x, X, {}), ("model",), id="model is a lambda"),
]


@pytest.mark.parametrize("make, needles", REFUSED)
def test_bad_audit_input_is_one_usage_error(make, needles):
    model, inputs, kwargs = make()
    raises_usage_error(lambda: endtoend.audit(model, inputs, **kwargs), *needles)


@pytest.mark.parametrize("loss, targets", [
    pytest.param("cross_entropy", Y, id="loss_fn='cross_entropy'"),
    pytest.param("mse", torch.randn(8, 3), id="loss_fn='mse'"),
])
def test_loss_given_by_name_works(loss, targets):
    try:
        report = endtoend.audit(make_model(), X, loss_fn=loss, targets=targets)
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"refused: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    assert report.ok


def test_a_model_returning_a_python_number_is_not_ok():
    # A number is how a tensor leaves through .item() / float(t): the audit reports it (exit 1),
    # naming the parameters that get no gradient, rather than refusing it as bad input.
    report = endtoend.audit(Returns(3), X)
    assert not report.ok and any(f.severity == "error" for f in report.findings)
