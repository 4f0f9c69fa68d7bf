"""Helpers for the user's own test suite: keep the gradient graph whole as the model changes.

```python
from endtoend.testing import assert_differentiable

def test_model_trains_end_to_end():
    assert_differentiable(MyModel(), torch.randn(4, 16), loss_fn=F.cross_entropy, targets=torch.tensor([0, 1, 0, 1]))
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from endtoend.audit import AuditReport, Finding, audit
from endtoend.errors import UsageError

__all__ = ["assert_differentiable"]


def assert_differentiable(
    model: nn.Module,
    inputs: Any,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | str | None = None,
    targets: Any = None,
    allow: Iterable[str] | str = (),
) -> AuditReport:
    """Run `endtoend.audit(model, inputs, loss_fn=, targets=)` and raise `AssertionError`,
    whose message is the report's table, when an error finding is left.

    `allow` names the findings you accept: an op (as the report names it, "Tensor.argmax", or
    without its namespace, "argmax") accepts every finding of that op; a parameter name
    ("router.weight") or a module's name ("router": every parameter under it) accepts a
    finding once every parameter it concerns is accepted. Returns the report when the
    assertion holds.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this one
    names = _allowed(allow)
    report = audit(model, inputs, loss_fn=loss_fn, targets=targets)
    kept = [f for f in report.findings if not _is_allowed(f, names)]
    remaining = dataclasses.replace(report, findings=kept)
    if not remaining.ok:
        accepted = len(report.findings) - len(kept)
        note = f" ({accepted} accepted by allow=)" if accepted else ""
        raise AssertionError(f"the model's gradient graph is cut{note}:\n{remaining}")
    return report


def _allowed(allow: Iterable[str] | str) -> frozenset[str]:
    names = (allow,) if isinstance(allow, str) else tuple(allow)
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise UsageError(f"assert_differentiable: allow= takes op or parameter names (strings), got {bad[0]!r}")
    return frozenset(names)


def _is_allowed(finding: Finding, names: frozenset[str]) -> bool:
    if not names:
        return False
    if finding.op and (finding.op in names or finding.op.rsplit(".", 1)[-1] in names):
        return True
    return bool(finding.parameters) and all(_parameter_allowed(p, names) for p in finding.parameters)


def _parameter_allowed(parameter: str, names: frozenset[str]) -> bool:
    parts = parameter.split(".")
    return any(".".join(parts[:depth]) in names for depth in range(1, len(parts) + 1))
