"""Step 2, backward: every parameter's gradient as training sees it, and probes of the zeros.

One plain backward of the objective gives the gradients. Gradients that are exactly zero are
probed again with a random projection of the outputs (a zero that only comes from the
loss's current value is not dead), then once more with the all-zero weights nudged (a zero
that only comes from a zero-initialised head is lifted by the first update). Hooks on custom
`autograd.Function` nodes note the inputs their backward returned None or zeros for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd.function import BackwardCFunction

from endtoend.audit.evidence import Evidence
from endtoend.audit.objective import random_projection
from endtoend.audit.ops import values

# How many random projections of the outputs re-check a zero gradient before the nudge.
PROBES = 1
_NUDGE = 1e-3


def measure_gradients(evidence: Evidence, output: Any, objective: torch.Tensor | None,
                      forward: Callable[[], Any], objective_of: Callable[[Any], torch.Tensor | None]) -> None:
    """Fill `evidence` with the gradients, backward's error, the custom Function nodes'
    verdicts, and the dead and lifted parameter ids. `forward` and `objective_of` run the
    model again for the nudge."""
    params = [p for _, p in evidence.trainable]
    # The hooks must be in place before the backward they watch.
    evidence.custom_nodes = _hook_custom_functions(objective) if evidence.custom_calls else []
    evidence.grads, evidence.backward_error = _gradients(objective, params)
    zero = [p for p, g in zip(params, evidence.grads) if g is not None and not values(g).any()]
    dead = _probe_zero_gradients(output, zero)
    if dead:
        evidence.zero_weights, evidence.lifted = _lifted_by_nudging_zero_weights(
            evidence.model, forward, objective_of, dead)
    evidence.dead = dead - evidence.lifted


def _hook_custom_functions(objective) -> list[tuple[BackwardCFunction, list[int]]]:
    """Hook every custom Function node in the objective's graph: the hook notes which inputs
    its backward returned None (or exact zeros) for."""
    found = []
    if not isinstance(objective, torch.Tensor) or objective.grad_fn is None:
        return found
    stack, seen = [objective.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, BackwardCFunction):
            blocked: list[int] = []
            node.register_hook(
                lambda grad_inputs, grad_outputs, blocked=blocked: blocked.extend(
                    i for i, g in enumerate(grad_inputs) if g is None or not values(g).any()
                )
            )
            found.append((node, blocked))
        stack.extend(child for child, _ in node.next_functions)
    return found


def _gradients(objective, params) -> tuple[list, str | None]:
    if not isinstance(objective, torch.Tensor) or not objective.requires_grad or not params:
        return [None] * len(params), None
    try:
        return _grad(objective, params), None
    except RuntimeError as error:  # e.g. an op whose derivative is not implemented: a finding
        return [None] * len(params), str(error).splitlines()[0]


def _grad(objective: torch.Tensor, params: list) -> list:
    """The gradients of `params`, read from `.grad` after a plain backward, exactly as training
    sees them (`autograd.grad(inputs=...)` misses what reentrant checkpointing accumulates in
    its nested backward); `.grad` is None again afterwards."""
    objective.backward(retain_graph=True)
    found = []
    for p in params:
        found.append(p.grad)
        p.grad = None
    return found


def _probe_zero_gradients(output, zero: list[torch.Tensor]) -> set[int]:
    """Ids of the parameters whose gradient stays exactly zero under random projections of
    the outputs too: a zero that only comes from the loss's current value is not dead."""
    still_zero = list(zero)
    for seed in range(1, PROBES + 1):
        projection = random_projection(output, seed)
        if projection is None or not still_zero:
            break
        grads = _grad(projection, still_zero)
        still_zero = [p for p, g in zip(still_zero, grads) if g is None or not values(g).any()]
    return {id(p) for p in still_zero}


def _lifted_by_nudging_zero_weights(model: nn.Module, forward, objective_of,
                                    dead_ids: set[int]) -> tuple[list, set[int]]:
    """Nudge the all-zero parameters (zero-initialised heads, last norms of residual branches)
    and probe once more: the dead candidates that now get gradient were starved by that zero,
    which the first update lifts. Returns (the zero parameters, ids of the lifted ones).
    The nudged values are undone by the audit's state preservation."""
    # Biases are skipped: they add, so a zero bias never zeroes anyone's gradient.
    zero_weights = [p for n, p in model.named_parameters()
                    if p.requires_grad and not n.endswith("bias") and not p.any()]
    candidates = [p for p in model.parameters() if id(p) in dead_ids]
    if not zero_weights or not candidates:
        return [], set()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in zero_weights:
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * _NUDGE)
    output = forward()
    terms = [t for t in (objective_of(output), random_projection(output, seed=PROBES + 1))
             if isinstance(t, torch.Tensor) and t.requires_grad]
    if not terms:
        return zero_weights, set()
    grads = _grad(sum(terms), candidates)  # one backward for both probes
    return zero_weights, {id(p) for p, g in zip(candidates, grads) if g is not None and values(g).any()}
