"""The differentiability audit: broken models are caught at the right line with the right
parameters; correct models come out ok; the audit leaves no trace; the CLI helpers."""

import io
import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from endtoend.audit import AuditReport, audit
from endtoend.cli.audit import load_factory, run_audit_command
from endtoend.errors import UsageError
from endtoend.relax import fix_for

sys.path.insert(0, os.path.dirname(__file__))
import zoo_broken  # noqa: E402
import zoo_correct  # noqa: E402


def marker_line(module, marker: str) -> int:
    """The line ending in `# <marker>` in the zoo's source: the line the audit must report."""
    with open(module.__file__) as source:
        lines = [n for n, text in enumerate(source, 1) if text.rstrip().endswith(f"# {marker}")]
    assert len(lines) == 1, f"marker {marker!r} must appear exactly once"
    return lines[0]


@pytest.mark.parametrize("case", sorted(zoo_broken.CASES))
def test_broken_model_is_caught_at_its_line(case):
    torch.manual_seed(0)
    model, inputs, kind, op, starved = zoo_broken.CASES[case]()
    report = audit(model, inputs)

    assert not report.ok
    errors = [f for f in report.findings if f.severity == "error"]
    at_line = [f for f in errors if f.line == marker_line(zoo_broken, f"CUT {case}")]
    assert len(at_line) == 1, report
    finding = at_line[0]
    assert (finding.kind, finding.op) == (kind, op)
    assert os.path.samefile(finding.file, zoo_broken.__file__)
    assert finding.message and finding.fix
    # Every starved parameter is named, and nothing that learns is.
    assert sorted({p for f in errors for p in f.parameters}) == starved
    assert set(finding.parameters) <= set(starved)
    learning = {name for name, norm in report.grad_norms.items() if norm}
    assert learning.isdisjoint(starved)


def test_cut_fix_names_the_relaxation():
    report = audit(*zoo_broken.CASES["argmax"]()[:2])
    (finding,) = [f for f in report.findings if f.severity == "error"]
    assert "straight_through_argmax" in finding.fix and "gumbel_softmax" in finding.fix


def test_starved_parameters_are_listed_as_unused_or_dead():
    report = audit(*zoo_broken.CASES["detach"]()[:2])
    assert report.unused_parameters == ["enc.weight", "enc.bias"]
    report = audit(*zoo_broken.CASES["dead"]()[:2])
    assert report.dead_parameters == ["hidden.weight", "hidden.bias", "out.weight"]
    report = audit(*zoo_broken.CASES["round"]()[:2])
    assert report.dead_parameters == ["enc.weight", "enc.bias"]  # zero-derivative op


@pytest.mark.parametrize("case", sorted(zoo_correct.CASES))
def test_correct_model_is_ok(case):
    torch.manual_seed(0)
    model, inputs, loss_fn, targets = zoo_correct.CASES[case]()
    report = audit(model, inputs, loss_fn=loss_fn, targets=targets)
    assert report.ok, report
    assert not [f for f in report.findings if f.severity == "warning"], report


def test_intended_cuts_are_info():
    for case, op in [("straight_through_round", "round"), ("gumbel_hard", "Tensor.argmax"),
                     ("hungarian_set_loss", "Tensor.detach"), ("moe_topk", "Tensor.topk.indices")]:
        model, inputs, loss_fn, targets = zoo_correct.CASES[case]()
        report = audit(model, inputs, loss_fn=loss_fn, targets=targets)
        assert any(f.kind == "cut" and f.op == op and f.severity == "info" for f in report.findings), case


def test_zero_initialised_head_is_info_not_dead():
    report = audit(*zoo_correct.CASES["zero_init_head"]()[:2])
    (finding,) = report.findings
    assert (finding.severity, finding.kind) == ("info", "zero_init")
    assert finding.parameters == ["body.0.bias", "body.0.weight"]
    assert finding.line == marker_line(zoo_correct, "ZERO head")  # where the zero weight is used
    assert report.dead_parameters == []


def test_frozen_parameters_are_info():
    report = audit(*zoo_correct.CASES["frozen_backbone"]()[:2])
    assert report.frozen_parameters == ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias"]
    assert [f.kind for f in report.findings] == ["frozen"]
    assert set(report.grad_norms) == {"head.weight", "head.bias"}


def test_expert_without_tokens_is_not_an_error():
    # Two tokens reach at most four of eight experts: the skipped ones are a warning, not an error.
    torch.manual_seed(0)
    model = zoo_correct.TopKMixture(experts=8, k=2)
    report = audit(model, torch.randn(2, zoo_correct.D))
    assert report.ok
    (warning,) = [f for f in report.findings if f.severity == "warning"]
    assert warning.kind == "unused" and warning.module == "experts"
    assert warning.line == marker_line(zoo_correct, "ROUTED experts")


def test_expert_run_on_no_tokens_is_info():
    # Run on an empty selection, idle experts get an exactly zero gradient: data, not a bug.
    torch.manual_seed(0)
    model = zoo_correct.TopKMixture(experts=8, k=2, skip_idle_experts=False)
    report = audit(model, torch.randn(2, zoo_correct.D))
    assert report.ok and not report.dead_parameters
    no_data = [f for f in report.findings if f.kind == "no_data"]
    assert no_data and all(f.severity == "info" for f in no_data)
    assert {f.line for f in no_data} == {marker_line(zoo_correct, "ROUTE")}
    assert all(p.startswith("experts.") for f in no_data for p in f.parameters)


def test_top1_routing_with_softmax_over_one_logit_is_dead():
    # softmax over the single chosen logit is always 1: the router's gradient is exactly zero.
    torch.manual_seed(0)
    report = audit(zoo_correct.TopKMixture(experts=2, k=1), torch.randn(32, zoo_correct.D))
    assert report.dead_parameters == ["router.weight", "router.bias"]


def test_objective_choice():
    class ScalarLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(3, 1)

        def forward(self, x):
            return self.w(x).pow(2).mean()

    x = torch.randn(4, 3)
    assert audit(ScalarLoss(), x).ok  # the scalar output is the objective
    model = nn.Linear(3, 2)
    report = audit(model, (x,), loss_fn=F.cross_entropy, targets=torch.tensor([0, 1, 0, 1]))
    assert report.ok and set(report.grad_norms) == {"weight", "bias"}
    # A loss that ignores the model's output starves everything.
    report = audit(model, x, loss_fn=lambda out, t: (out.detach() ** 2).sum())
    assert not report.ok and report.unused_parameters == ["weight", "bias"]


def test_keyword_inputs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, left, right):
            return self.a(left) + self.b(right)

    assert audit(TwoInputs(), {"left": torch.randn(2, 3), "right": torch.randn(2, 3)}).ok
    with pytest.raises(UsageError):
        audit(TwoInputs(), "not a tensor")


def test_reentrant_checkpoint_and_sparse_embedding_are_ok():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4, sparse=True)
            self.block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
            self.head = nn.Linear(4, 2)

        def forward(self, tokens):
            h = self.embed(tokens).requires_grad_()  # reentrant checkpointing needs a grad input
            return self.head(checkpoint(self.block, h, use_reentrant=True).mean(1))

    report = audit(Checkpointed(), torch.tensor([[1, 2, 3], [4, 5, 6]]))
    assert report.ok and all(report.grad_norms.values()), report


def test_nonfinite_gradient_and_missing_derivative_are_errors():
    class Sqrt(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return (x * self.w.sqrt()).sum(1)  # d sqrt(w) / dw is inf at w = 0

    report = audit(Sqrt(), torch.ones(2, 3))
    assert [f.kind for f in report.findings if f.severity == "error"] == ["nonfinite"]

    class FloorDivide(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(3, 3)

        def forward(self, x):
            return torch.floor_divide(self.w(x), 2)  # no derivative at all

    report = audit(FloorDivide(), torch.ones(2, 3))
    assert "backward_error" in [f.kind for f in report.findings if f.severity == "error"]


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        [m.training for m in model.modules()],
    )


def test_audit_leaves_everything_as_found():
    torch.manual_seed(0)
    model, inputs, loss_fn, targets = zoo_correct.CASES["resnet_zero_init_residual"]()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    model.conv1.weight.requires_grad_(False)
    before = _snapshot(model)
    rng = torch.get_rng_state()

    audit(model, inputs, loss_fn=loss_fn, targets=targets)
    after = _snapshot(model)

    assert torch.equal(rng, torch.get_rng_state())
    assert before[0].keys() == after[0].keys()
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])  # BatchNorm stats too
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[1].values(), after[1].values()))
    assert before[2:] == after[2:]


def test_training_is_bit_identical_after_an_audit():
    def train(with_audit: bool):
        torch.manual_seed(0)
        model = zoo_correct.ResNetBlock()
        x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
        if with_audit:
            audit(model, x, loss_fn=F.cross_entropy, targets=y)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(train(False), train(True)))


def test_report_json_and_table():
    report = audit(*zoo_broken.CASES["argmax"]()[:2])
    assert isinstance(report, AuditReport)
    data = json.loads(report.to_json())
    assert data["ok"] is False
    (error,) = [f for f in data["findings"] if f["severity"] == "error"]
    assert error["op"] == "Tensor.argmax" and error["line"] == marker_line(zoo_broken, "CUT argmax")
    assert set(error) >= {"severity", "kind", "op", "module", "file", "line", "message", "fix"}
    assert data["unused_parameters"] == ["router.weight", "router.bias"]
    text = str(report)  # a wide table
    assert "Tensor.argmax" in text and f"zoo_broken.py:{error['line']}" in text and "NOT OK" in text
    narrow = io.StringIO()  # one block per finding
    Console(file=narrow, width=70).print(report)
    assert f"zoo_broken.py:{error['line']}" in narrow.getvalue() and "fix: use" in narrow.getvalue()


ZOO_BROKEN = zoo_broken.__file__
ZOO_CORRECT = zoo_correct.__file__


@pytest.mark.parametrize("spec, expected", [
    ("no_colon_here", "unknown recipe 'no_colon_here'; known recipes: detect, digits"),
    (":make", "expected PATH.py:FACTORY or a recipe"),
    ("/nonexistent/model.py:make", "no such model file"),
    (f"{ZOO_BROKEN}:does_not_exist", "has no function 'does_not_exist'"),
    (f"{ZOO_BROKEN}:make_raising", "make_raising() raised ValueError: no data here"),
    (f"{ZOO_BROKEN}:make_wrong_shape", "must return (model, inputs)"),
])
def test_load_factory_errors_are_one_line(spec, expected):
    with pytest.raises(UsageError) as caught:
        load_factory(spec)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("recipe", ["detect", "segment", "digits"])
def test_audit_of_a_recipe_finds_no_cut_in_its_model_and_loss(recipe, capsys):
    """detect's set model included: the matcher and the query selection are decisions under
    no_grad, not cuts."""
    assert run_audit_command(recipe, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and not [f for f in data["findings"] if f["severity"] != "info"]


def test_audit_command_exit_codes(capsys):
    assert run_audit_command(f"{ZOO_BROKEN}:make_numpy_trip") == 1
    assert "NumPy" in capsys.readouterr().out
    assert run_audit_command(f"{ZOO_CORRECT}:make_vae", as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


# ----------------------------------------------------------------------------- regressions

THIS = sys.modules[__name__]


Front = zoo_broken.Front


FRONT = ["front.bias", "front.weight"]


def _rows():
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


def _errors(report):
    return [f for f in report.findings if f.severity == "error"]


def bernoulli_sample(h):
    return torch.bernoulli(torch.sigmoid(h))  # SAMPLE bernoulli


def normal_sample(h):
    return torch.normal(h, torch.exp(h))  # SAMPLE normal


def poisson_sample(h):
    return torch.poisson(F.softplus(h))  # SAMPLE poisson


def exponential_in_place(h):
    return (h * 1).exponential_()  # SAMPLE exponential_


@pytest.mark.parametrize("cut, op, fix", [
    (bernoulli_sample, "bernoulli", "endtoend.relax.relaxed_bernoulli"),
    (normal_sample, "normal", "endtoend.relax.reparameterize"),
    (poisson_sample, "poisson", "score-function estimator"),  # no relaxation registered
    (exponential_in_place, "Tensor.exponential_", "score-function estimator"),
], ids=["bernoulli", "normal", "poisson", "exponential_"])
def test_random_samples_without_gradient_are_cuts_at_their_line(cut, op, fix):
    # Their derivative with respect to the distribution's parameters is zero: a cut at the
    # sampling line with the relaxation, not a `dead` finding at front's first use.
    report = audit(Front(cut), _rows())
    (finding,) = _errors(report)
    assert (finding.kind, finding.op) == ("cut", op)
    assert finding.line == marker_line(THIS, f"SAMPLE {op.removeprefix('Tensor.')}")
    assert finding.parameters == FRONT and fix in finding.fix
    assert "sample" in finding.message and sorted(report.dead_parameters) == FRONT


def test_random_ops_that_pass_gradient_are_not_cuts():
    # Dropout multiplies the gradient by its mask (even a mask of zeros passes a NaN on);
    # Gamma's sample is reparameterised; a REINFORCE loss trains through log_prob.
    def score_function(h):
        p = torch.sigmoid(h)
        a = torch.bernoulli(p)
        return (torch.distributions.Bernoulli(probs=p).log_prob(a) * a).sum(-1, keepdim=True).expand_as(h)

    for cut in (lambda h: F.dropout(h, 0.5, training=True), lambda h: torch._standard_gamma(F.softplus(h) + 1),
                score_function):
        report = audit(Front(cut), _rows())
        assert report.ok, report
        assert not [f for f in report.findings if f.kind == "cut" and f.severity != "info"], report
    # A dropout that drops everything in this batch starves front: dead, not a sampling cut.
    report = audit(Front(lambda h: F.dropout(h, 0.999, training=True)), _rows())
    assert [f.kind for f in _errors(report)] == ["dead"], report


def test_equality_is_named_like_the_other_comparisons_and_gets_their_fix():
    report = audit(Front(lambda h: (h == h.amax(-1, keepdim=True)).float()), _rows())
    (finding,) = _errors(report)
    assert finding.op == "Tensor.eq" and finding.fix == fix_for("eq") and "soft_threshold" in finding.fix
    assert "__eq" not in report.to_json()
    report = audit(Front(lambda h: torch.eq(h, h.amax(-1, keepdim=True)).float()), _rows())
    assert [f.op for f in _errors(report)] == ["eq"]


def test_metadata_read_from_a_cut_is_not_a_re_entry():
    # A check that reads only .dim(), .shape, .size(), len() and the dtype of a comparison
    # (a distribution's argument validation) feeds no values back: nothing to report.
    def checked(h):
        valid = h == h  # METADATA check
        assert valid.dim() == 2 and valid.shape[0] == len(valid) == valid.size(0) and valid.dtype == torch.bool
        assert valid.reshape(valid.shape[:1] + (-1,)).all()
        return h

    report = audit(Front(checked), _rows())
    assert report.ok and not report.findings, report


@pytest.mark.parametrize("case", ["categorical", "one_hot_categorical"])
def test_categorical_sample_is_one_error(case):
    # Categorical's argument check runs `logits == logits`, then .dim() and .shape; and
    # OneHotCategorical casts its sample with .to(probs): neither is a second cut.
    torch.manual_seed(0)
    model, inputs, _kind, _op, starved = zoo_broken.CASES[case]()
    (finding,) = _errors(audit(model, inputs))
    assert (finding.op, finding.parameters) == ("multinomial", starved)
    assert "gumbel_softmax" in finding.fix


def test_an_output_whose_input_had_no_gradient_is_no_cut():
    # broadcast_tensors(h, tensor(1.0)): the second output never had gradient (Normal(h, 1.0)).
    def broadcast(h):
        a, b = torch.broadcast_tensors(h, torch.tensor(1.0))
        return a * b

    report = audit(Front(broadcast), _rows())
    assert report.ok and not report.findings, report
    torch.manual_seed(0)
    model, inputs, *_ = zoo_broken.CASES["normal_unit_scale"]()
    (finding,) = _errors(audit(model, inputs))
    assert finding.op == "no_grad" and "reparameterize" in finding.fix
    # The index output of a (values, indices) op is still a cut.
    report = audit(Front(lambda h: h.max(-1, keepdim=True).indices.float().expand_as(h)), _rows())
    assert [f.op for f in _errors(report)] == ["Tensor.max.indices"]


class TensorCrop(nn.Module):
    """A localiser's corner, cast to integers that stay tensors, places a crop."""

    def __init__(self, narrow: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.front = nn.Linear(64, 2)
        self.classifier = nn.Linear(16, 1)
        self.narrow = narrow

    def forward(self, images):  # (batch, 8, 8)
        corner = (2 + 2 * torch.tanh(self.front(images.flatten(1)))).long()  # CROP corner
        if self.narrow:
            crops = [image.narrow(0, y, 4).narrow(1, x, 4) for image, (x, y) in zip(images, corner)]
        else:
            crops = [image[y:y + 4, x:x + 4] for image, (x, y) in zip(images, corner)]
        return self.classifier(torch.stack(crops).flatten(1))


@pytest.mark.parametrize("narrow", [False, True], ids=["slice", "narrow"])
def test_integer_used_as_a_slice_bound_gets_the_crop_fix(narrow):
    report = audit(TensorCrop(narrow), torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)))
    (finding,) = _errors(report)
    assert (finding.op, finding.line) == ("Tensor.long", marker_line(THIS, "CROP corner"))
    assert finding.fix == fix_for("integer_index") and "endtoend.relax.affine_crop" in finding.fix
    assert "position" in finding.message and finding.parameters == ["front.bias", "front.weight"]
    # An integer used as a gather index keeps the cast's own fix (IntegerCast in the zoo).
    report = audit(*zoo_broken.CASES["long"]()[:2])
    (finding,) = _errors(report)
    assert "straight_through_round" in finding.fix


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_audit_command_survives_a_closed_pipe(as_json):
    # `e2e audit ... | head`: the reader goes away; no traceback, and the exit code stands
    # (1: the model is broken), for the JSON and for rich's table alike.
    import subprocess

    command = [sys.executable, "-c", "import sys; from endtoend.cli import main; sys.exit(main(sys.argv[1:]))",
               "audit", f"{ZOO_BROKEN}:make_numpy_trip"] + (["--json"] if as_json else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before anything is written
    stderr = process.stderr.read().decode()
    assert process.wait() == 1, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_audit_command_closed_pipe_in_process(monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert run_audit_command(f"{ZOO_CORRECT}:make_vae", as_json=True) == 0
