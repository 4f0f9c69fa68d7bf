"""Bad input to the audit is one UsageError line naming what was wrong, not a finding
blamed on the model; the user's own exceptions pass through `audit()` as they are."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import endtoend
from endtoend.audit import audit
from endtoend.cli import main
from endtoend.errors import UsageError

sys.path.insert(0, os.path.dirname(__file__))
import zoo_broken  # noqa: E402
import zoo_correct  # noqa: E402

X = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 0, 1])


class Returns(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.layer, self.value = nn.Linear(3, 2), value

    def forward(self, x):
        self.layer(x)
        return self.value


def _usage_error(*args, **kwargs) -> str:
    with pytest.raises(UsageError) as caught:
        audit(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("value, type_name", [(None, "NoneType"), ("logits", "str")])
def test_a_model_returning_none_or_a_string_is_a_usage_error(value, type_name):
    message = _usage_error(Returns(value), X)
    assert f"the model returned {type_name};" in message and "needs a tensor" in message
    # A loss does not make None a model output.
    message = _usage_error(Returns(value), X, loss_fn=lambda out, t: out, targets=Y)
    assert f"the model returned {type_name};" in message


def test_a_python_number_from_the_model_is_still_a_cut():
    class ReturnsItem(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 1)

        def forward(self, x):
            return self.layer(x).sum().item()

    report = audit(ReturnsItem(), X)
    assert [(f.kind, f.op) for f in report.findings if f.severity == "error"] == [("cut", "Tensor.item")]


def test_a_loss_returning_none_is_a_usage_error():
    message = _usage_error(nn.Linear(3, 2), X, loss_fn=lambda out, t: None, targets=Y)
    assert "loss_fn returned NoneType" in message


def test_a_model_without_parameters_is_a_usage_error():
    class Doubler(nn.Module):
        def forward(self, x):
            return x * 2

    message = _usage_error(Doubler(), X)
    assert "(Doubler) has no parameters" in message


@pytest.mark.parametrize("inputs", [torch.zeros(0, 3), (torch.zeros(0, 3),), {"input": torch.zeros(0, 3)}],
                         ids=["tensor", "tuple", "dict"])
def test_an_empty_batch_is_a_usage_error(inputs):
    message = _usage_error(nn.Linear(3, 2), inputs)
    assert "0 rows (shape (0, 3))" in message


def test_an_empty_side_input_next_to_rows_is_data():
    class WithBoxes(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 2)

        def forward(self, x, boxes):
            return self.layer(x) + boxes.sum()  # no boxes in this image: a sum of zero

    report = audit(WithBoxes(), (X, torch.zeros(0, 4)))
    assert report.ok and all(report.grad_norms.values())


@pytest.mark.parametrize("loss", [F.cross_entropy, nn.CrossEntropyLoss(), "cross_entropy"],
                         ids=["function", "module", "name"])
def test_torch_losses_without_targets_are_a_usage_error(loss):
    message = _usage_error(nn.Linear(3, 2), X, loss_fn=loss)
    assert "needs targets; pass targets=" in message
    assert ("CrossEntropyLoss" if isinstance(loss, nn.Module) else "cross_entropy") in message


def test_without_targets_a_one_argument_loss_gets_the_output_alone():
    seen = []

    def energy(output):
        seen.append(output.shape)
        return output.pow(2).mean()

    report = audit(nn.Linear(3, 2), X, loss_fn=energy)
    assert report.ok and seen[0] == (4, 2)

    def two_arguments(output, targets):  # the user's own two-argument loss: targets=None, as before
        seen.append(targets)
        return output.pow(2).mean()

    assert audit(nn.Linear(3, 2), X, loss_fn=two_arguments).ok and seen[-1] is None


def test_a_loss_name_is_resolved_like_fit_does():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    by_name = audit(model, X, loss_fn="cross_entropy", targets=Y)
    by_function = audit(model, X, loss_fn=F.cross_entropy, targets=Y)
    assert by_name.ok and by_name.grad_norms == by_function.grad_norms
    message = _usage_error(model, X, loss_fn="crossentropy", targets=Y)
    assert "unknown loss 'crossentropy'" in message and "cross_entropy" in message
    assert "got list" in _usage_error(model, X, loss_fn=["cross_entropy"], targets=Y)


def test_the_users_own_exception_passes_through_with_its_traceback():
    model, inputs = zoo_broken.make_raising_forward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="my forward is broken") as caught:
        audit(model, inputs)
    last = caught.traceback[-1]
    assert last.name == "forward" and last.lineno + 1 == _marker_line(zoo_broken, "RAISE forward")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    def loss(output, targets):
        raise KeyError("my loss is broken")

    with pytest.raises(KeyError, match="my loss is broken") as caught:
        audit(nn.Linear(3, 2), X, loss_fn=loss, targets=Y)
    assert caught.traceback[-1].name == "loss"


def test_the_library_folder_is_the_endtoend_package_not_the_audit_package():
    from endtoend.audit.record import ENDTOEND_DIR

    assert ENDTOEND_DIR == os.path.dirname(os.path.abspath(endtoend.__file__)) + os.sep

    class Quantizer(nn.Module):  # a straight-through cut inside endtoend.relax: intended, unreported
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x):
            return endtoend.relax.straight_through_round(self.layer(x))

    assert audit(Quantizer(), X).findings == []


ZOO_BROKEN, ZOO_CORRECT = zoo_broken.__file__, zoo_correct.__file__


@pytest.mark.parametrize("factory, code, stderr", [
    (f"{ZOO_CORRECT}:make_named_loss", 0, ""),
    (f"{ZOO_BROKEN}:make_numpy_trip", 1, ""),
    (f"{ZOO_BROKEN}:make_returns_none", 2, "error: audit: the model returned NoneType;"),
    (f"{ZOO_BROKEN}:make_unknown_loss", 2, "error: audit: unknown loss 'crossentropy'"),
    (f"{ZOO_BROKEN}:make_raising_forward", 2,
     "error: audit: the model's forward or loss raised ValueError: my forward is broken"),
], ids=["named_loss_ok", "not_ok", "returns_none", "unknown_loss", "forward_raises"])
def test_audit_command_exit_codes_and_one_line_errors(capsys, factory, code, stderr):
    assert main(["audit", factory, "--json"]) == code
    err = capsys.readouterr().err
    assert err.startswith(stderr) and err.count("\n") == (1 if stderr else 0), err


def _marker_line(module, marker: str) -> int:
    with open(module.__file__) as source:
        (line,) = [n for n, text in enumerate(source, 1) if text.rstrip().endswith(f"# {marker}")]
    return line
