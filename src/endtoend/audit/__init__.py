"""The differentiability audit: is there one differentiable graph from input to loss?

`audit(model, inputs)` answers "which parameters got no gradient, and why" in steps, one
module each, passing one `Evidence` object (evidence.py) from step to step:

1. **Record the forward** (record.py). The forward and the objective run under a
   `TorchFunctionMode` that sees every torch call. A call whose inputs require grad is a
   *cut* when its tensor outputs do not (`argmax`, comparisons, integer casts, `.detach()`,
   `.data`, anything under `torch.no_grad()`), when it turns the tensor into a Python value
   (`.item()`, `.tolist()`, `int(t)`), when its derivative is zero almost everywhere
   (`round`, `sign`, ...), or when it is a random op whose own backward node returns zeros
   whatever gradient arrives (a sample that is not reparameterised: `bernoulli`, `normal`,
   `poisson`). Each cut keeps the user's file and line, the module whose code holds that
   line, the autograd nodes of its inputs, and whether anything later consumed its output
   (an unused index output, such as the one of `topk` in top-k routing, cuts nothing),
   whether its values came back into the computation (reading `.shape` or `.dim()` does
   not) and whether they became a position (a slice bound: the crop fix).
2. **Backward** (backward.py). One plain backward of the objective gives every parameter's
   gradient as training sees it. Gradients that are exactly zero are probed again with
   random projections of the outputs, then once more with the all-zero parameters nudged,
   which tells a zero-initialised head (the first update lifts it) from a truly dead unit.
3. **Join** (join.py). Walking the autograd graph back from each cut's inputs to the
   `AccumulateGrad` nodes gives the parameters upstream of it. A cut is to blame for those
   that are starved (gradient None or dead); one whose parameters get gradient by another
   path (straight-through estimators, hard Gumbel-softmax, Hungarian matching on a detached
   cost) is blamed for nothing and reported as intended.
4. **Findings** (findings.py). Each blamed cut gets its text and the relax registry's fix;
   starved parameters no cut explains are `unused` (gradient None) or `dead` (zero).
5. **Report** (report.py): `AuditReport`, a rich table or JSON.

Around all of it, preserve.py restores everything the audit touched (parameters, buffers,
`.grad`, modes, requires_grad flags, RNG state), so training after an audit is
bit-identical; objective.py calls the model, builds the objective, and refuses bad input
as one `UsageError` line.

The function level does not see `autograd.Function.apply`. The ops inside a custom
`forward` run with grad disabled; they are recognised by the forward's code object on the
stack (not cuts), the call site is recorded, and the Function's backward is checked by a
hook on its graph node: an input it returns None or zeros for is a `no_backward` finding.
A dispatch-level mode was not needed: ops the function level cannot see run inside a call
it does see, whose outputs tell whether gradient survives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from endtoend.audit.backward import measure_gradients
from endtoend.audit.evidence import Evidence
from endtoend.audit.findings import write_findings
from endtoend.audit.join import join_cuts_to_parameters
from endtoend.audit.objective import call_model, check_inputs, check_model, make_objective
from endtoend.audit.ops import tensors_in
from endtoend.audit.preserve import preserved
from endtoend.audit.record import record_forward
from endtoend.audit.report import AuditReport, Finding, make_report

__all__ = ["AuditReport", "Finding", "audit"]


def audit(
    model: nn.Module,
    inputs: Any,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | str | None = None,
    targets: Any = None,
) -> AuditReport:
    """Check that every trainable parameter of `model` gets gradient from the objective.

    `inputs` is a tensor, a tuple of positional inputs, or a dict of keyword inputs. The
    objective is `loss_fn(output, targets)` when given (`loss_fn` may be a loss name that
    `fit` accepts, such as "cross_entropy"; without targets a one-argument loss is called as
    `loss_fn(output)`), else the model's output when it is a scalar, else a fixed random
    projection of the outputs (so every output element carries gradient). The model, its
    buffers, `.grad`, modes and the RNG are left as found.

    Raises `UsageError` for input the audit cannot check: a model without parameters, inputs
    of another type or with 0 rows, a model returning None or a string, an unknown loss name,
    or one of torch's losses without targets. An exception raised by the model's forward or
    the loss passes through as it is.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module  # the wrapper's forward would synchronise and its backward reduce
    named = check_model(model)
    check_inputs(inputs)
    objective_of = make_objective(loss_fn, targets)

    def forward() -> Any:
        return call_model(model, inputs)

    input_leaves = [t for t in tensors_in(inputs, []) if t.requires_grad and t.grad_fn is None]
    with preserved(model, input_leaves):
        for _, p in named:
            p.grad = None  # the backward step reads what one backward accumulates
        evidence = Evidence(model, trainable=[(name, p) for name, p in named if p.requires_grad],
                            frozen=[name for name, p in named if not p.requires_grad])
        output, objective = record_forward(evidence, forward, objective_of)
        measure_gradients(evidence, output, objective, forward, objective_of)
        join_cuts_to_parameters(evidence)
        return make_report(evidence, write_findings(evidence))
