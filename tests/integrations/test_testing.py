"""endtoend.testing.assert_differentiable: quiet on a correct model, the report's table as the
message on a broken one, and allow= by op and by parameter (or module) name."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from endtoend import UsageError, relax
from endtoend.testing import assert_differentiable


class Router(nn.Module):
    def __init__(self, hard=True, detached=False):
        super().__init__()
        self.hard, self.detached = hard, detached
        self.encoder = nn.Linear(16, 16)
        self.router = nn.Linear(16, 4)
        self.codes = nn.Embedding(4, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        x = x + (self.encoder(x).detach() if self.detached else self.encoder(x))
        if self.hard:
            return self.head(x + self.codes(self.router(x).argmax(-1)))  # cut: router
        return self.head(x + relax.straight_through_argmax(self.router(x)) @ self.codes.weight)


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 16, generator=g), torch.tensor([0, 1] * 4)


def built(**kwargs):
    torch.manual_seed(0)
    return Router(**kwargs)


def test_a_correct_model_passes_and_gives_the_report():
    x, y = batch()
    report = assert_differentiable(built(hard=False), x, loss_fn=F.cross_entropy, targets=y)
    assert report.ok and all(report.grad_norms.values())


def test_a_broken_model_fails_with_the_table(line_of):
    x, y = batch()
    with pytest.raises(AssertionError) as raised:
        assert_differentiable(built(), x, loss_fn="cross_entropy", targets=y)
    message = str(raised.value)
    assert message.startswith("the model's gradient graph is cut:\n")
    assert f"test_testing.py:{line_of('cut: router', Router)}" in message
    assert "cut Tensor.argmax" in message and "router.bias, router.weight" in message
    assert "endtoend.relax" in message  # the fix column
    assert message.rstrip().endswith("audit: NOT OK - 1 errors, 0 warnings, 0 info; 5/7 trainable parameters get "
                                     "gradient, 0 frozen")


@pytest.mark.parametrize("allow", ["Tensor.argmax", "argmax", ("router.weight", "router.bias"), "router"])
def test_allow_accepts_findings_by_op_or_by_parameter(allow):
    x, y = batch()
    report = assert_differentiable(built(), x, loss_fn=F.cross_entropy, targets=y, allow=allow)
    assert not report.ok  # the report itself still tells the truth


def test_allow_accepts_a_finding_only_when_all_its_parameters_are_named():
    x, y = batch()
    with pytest.raises(AssertionError) as raised:
        assert_differentiable(built(), x, loss_fn=F.cross_entropy, targets=y, allow=["router.weight", "Tensor.round"])
    assert str(raised.value).startswith("the model's gradient graph is cut:\n")
    assert "router.bias, router.weight" in str(raised.value)


def test_the_table_leaves_out_what_allow_accepts():
    x, y = batch()
    with pytest.raises(AssertionError) as raised:
        assert_differentiable(built(detached=True), x, loss_fn=F.cross_entropy, targets=y, allow="argmax")
    message = str(raised.value)
    assert message.startswith("the model's gradient graph is cut (1 accepted by allow=):\n")
    assert "cut Tensor.detach" in message and "Tensor.argmax" not in message


def test_allow_takes_names():
    x, _ = batch()
    with pytest.raises(UsageError, match="allow= takes op or parameter names"):
        assert_differentiable(built(), x, allow=[3])
