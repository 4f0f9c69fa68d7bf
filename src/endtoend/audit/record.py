"""Step 1, record the forward: a `TorchFunctionMode` that sees every torch call and notes the cuts.

A call whose inputs require grad is a cut when its tensor outputs do not, when it turns the
tensor into a Python value, when its derivative is zero almost everywhere, or when it is a
random op whose backward ignores the gradient arriving. Each cut keeps the user's file and
line, the module running it, the autograd nodes of its inputs (where the join starts), and
what became of its output: consumed at all, fed back into the computation, used as a position.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.function import BackwardCFunction
from torch.overrides import TorchFunctionMode

from endtoend.audit.evidence import Evidence
from endtoend.sources import ENDTOEND_DIR, TORCH_DIR, is_library
from endtoend.audit.ops import (
    CASTS, ESCAPES, METADATA, METADATA_TYPES, SHAPE_ONLY, ZERO_DERIVATIVE, ZERO_GRADIENT_KINDS, bare_name,
    blocked_outputs, graph_handle, ignores_incoming_gradient, is_random, lookup_name, op_name, positions,
    tensors_in,
)

# endtoend's own frames are library frames: a cut in them (a relaxation's own
# straight-through estimator) is intended (endtoend/sources.py).


@dataclass(eq=False)
class Site:
    """Where something happened in the user's code."""

    file: str | None
    line: int | None
    module: str | None
    torch_function: str | None = None  # innermost torch frame, e.g. "Normal.sample"
    internal: bool = False  # ran inside endtoend itself (a relaxation's own straight-through cut)


NOWHERE = Site(None, None, None)


@dataclass(eq=False)
class Cut:
    """One op (at one line) whose output lost the gradient of its inputs."""

    kind: str  # non_differentiable | escape | no_grad | zero_derivative | sampled | empty
    op: str  # what the user sees, e.g. "argmax", "Tensor.max.indices"
    lookup: str  # the name given to relax.registry.fix_for
    site: Site
    upstream: list = field(default_factory=list)  # grad_fn nodes, or leaf tensors
    consumers: set[str] = field(default_factory=set)
    consumed: bool = False
    # Did its values flow back into differentiable computation (rather than only into
    # Python control flow, such as a validity check)? Unknown for Python values: assume so.
    reentered: bool = False
    # Did its values become a position: a slice bound (`x[:, i:i + 4]`) or narrow's start?
    as_position: bool = False


@dataclass(eq=False)
class CustomCall:
    """One call of a custom `autograd.Function`, whose backward is checked in step 2."""

    cls: type
    site: Site
    ctx: Any  # the backward node (old-style forward(ctx, ...)), else None
    upstream: list


def record_forward(evidence: Evidence, forward: Callable[[], Any],
                   objective_of: Callable[[Any], torch.Tensor | None]) -> tuple[Any, torch.Tensor | None]:
    """Run the forward and the objective under the recorder; note the cuts, the custom
    Function calls and each parameter's first use in `evidence`. Returns (output, objective)."""
    recorder = Recorder(evidence.model)
    with recorder:
        output = forward()
        recorder.mark_returned(output)
        objective = objective_of(output)
    evidence.cuts = [cut for cut in recorder.cuts.values() if cut.consumed]  # an unused output cuts nothing
    evidence.custom_calls = recorder.custom_calls
    evidence.first_use = recorder.first_use
    evidence.internal_errors = recorder.internal_errors
    return output, objective


class Recorder(TorchFunctionMode):
    """Sees every torch call of the forward and notes the cuts, with the user's file and line."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.parameter_ids = {id(p) for p in model.parameters()}
        self.module_names = {id(m): name or None for name, m in model.named_modules()}
        self.cuts: dict[tuple, Cut] = {}
        self.custom_calls: list[CustomCall] = []
        self.first_use: dict[int, Site] = {}
        self.internal_errors: list[str] = []
        # id(tensor) -> (weak reference, the cuts it descends from without gradient)
        self._watched: dict[int, tuple[weakref.ref, set[Cut]]] = {}
        self._forward_frame = None
        self._function_forwards: dict | None = None  # forward code -> custom Function class

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # The user's own exception, raised here, passes through with its own traceback.
        result = func(*args, **kwargs)
        try:
            inputs = tensors_in(kwargs, tensors_in(args, []))
            if inputs:
                if self._watched:
                    self._follow_consumers(func, args, kwargs, inputs, result)
                self._note_parameter_use(inputs)
                grad_inputs = [t for t in inputs if t.requires_grad]
                if grad_inputs:
                    self._check_for_cut(func, args, kwargs, inputs, grad_inputs, result)
        except Exception as error:  # never let the audit break the user's forward
            self.internal_errors.append(f"{op_name(func)}: {type(error).__name__}: {error}")
        return result

    def _check_for_cut(self, func, args, kwargs, inputs, grad_inputs, result) -> None:
        name = bare_name(func)
        outputs = tensors_in(result, [])
        if name in CASTS and args and isinstance(args[0], torch.Tensor) and not args[0].requires_grad:
            return  # `x.to(other)`: the argument with gradient only lends its dtype and device
        if not torch.is_grad_enabled():
            if self._inside_custom_function():
                return  # a custom Function's forward: its backward decides, checked later
            blocked = [t for t in outputs if not t.requires_grad]
            if blocked or name in ESCAPES:  # not: metadata (ndim, shape), in-place weight updates
                self._record("no_grad", func, name, grad_inputs, blocked, consumed=not outputs)
        elif name in ESCAPES:
            self._record("escape", func, name, grad_inputs, [], consumed=True)
        elif any(not t.requires_grad for t in outputs):
            if name not in SHAPE_ONLY:
                blocked, partial = blocked_outputs(inputs, outputs)
                if blocked:
                    self._record("non_differentiable", func, name, grad_inputs, blocked, partial=partial)
        elif outputs and all(t.numel() == 0 for t in outputs) and any(t.numel() for t in grad_inputs):
            # An empty selection (no token routed to this expert, no box on this level): the
            # inputs get exactly zero gradient from this use, for this batch only.
            self._record("empty", func, name, grad_inputs, outputs)
        elif is_random(name) and ignores_incoming_gradient(name, outputs, grad_inputs):
            # A sample (bernoulli, normal, poisson, exponential_, ...) whose backward returns
            # zeros whatever gradient arrives: not reparameterised.
            self._record("sampled", func, name, grad_inputs, outputs)
        elif lookup_name(name) in ZERO_DERIVATIVE or (name in ("div", "divide", "div_") and kwargs.get("rounding_mode")):
            self._record("zero_derivative", func, name, grad_inputs, outputs)

    def _record(self, kind, func, name, grad_inputs, outputs, consumed=False, partial=False) -> None:
        site = self._site(sys._getframe(3))  # _record <- _check_for_cut <- __torch_function__ <- caller
        if site.internal:
            return  # the cuts inside endtoend.relax are its estimators, intended by construction
        op = op_name(func) + (".indices" if partial else "")
        lookup = lookup_name(name) + (".indices" if partial else "")
        if name in CASTS and kind == "non_differentiable":
            lookup = "to_integer"
        elif kind == "zero_derivative" and name.startswith("div"):
            lookup = "floor_divide"  # div(rounding_mode=...) rounds
        key = (kind, op, site.file, site.line, site.module)
        cut = self.cuts.get(key)
        if cut is None:
            cut = self.cuts[key] = Cut(kind, op, lookup, site)
        cut.upstream.extend(graph_handle(t) for t in grad_inputs)
        cut.consumed |= consumed
        cut.reentered |= consumed or kind in ZERO_GRADIENT_KINDS
        self._watch(outputs, {cut})

    def _watch(self, tensors, cuts: set[Cut]) -> None:
        for t in tensors:
            entry = self._watched.get(id(t))
            known = entry[1] if entry is not None and entry[0]() is t else set()
            self._watched[id(t)] = (weakref.ref(t), known | cuts)

    def _cuts_of(self, t) -> set[Cut]:
        # The weak reference guards against a recycled id: a new tensor at a freed address.
        entry = self._watched.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else set()

    def _follow_consumers(self, func, args, kwargs, inputs, result) -> None:
        """Mark cuts whose outputs this call consumes; keep following the gradient-free chain,
        so `.detach().cpu().numpy()` is seen as a trip through NumPy, and note the cuts whose
        values become positions (slice bounds)."""
        bare = bare_name(func)
        cuts: set[Cut] = set()
        for t in inputs:
            cuts |= self._cuts_of(t)
        at_positions: set[Cut] = set()
        for t in positions(bare, args, kwargs):
            at_positions |= self._cuts_of(t)
        if not cuts and not at_positions:
            return
        outputs = tensors_in(result, [])
        # Values flow back into the computation through a tensor that requires grad, or into
        # Python values and arrays (item, tolist, numpy) that may come back: assume they do.
        # A bare bool (an `if`, an argument check) only steers control flow, and metadata
        # (`.dim()`, `.shape`, `.dtype`) carries no values.
        reentered = any(t.requires_grad for t in outputs) or (
            not outputs and result is not None and not isinstance(result, (bool, *METADATA_TYPES))
            and bare not in METADATA)
        name = op_name(func)
        for cut in cuts | at_positions:
            cut.consumed = True
            cut.reentered |= reentered or cut in at_positions  # a crop's corner: it selects the values
            cut.as_position |= cut in at_positions
            cut.consumers.add(name)
        self._watch([t for t in outputs if not t.requires_grad], cuts)

    def _note_parameter_use(self, inputs) -> None:
        # Where a parameter is first used: the line a dead or zero_init finding points to.
        for t in inputs:
            if id(t) in self.parameter_ids and id(t) not in self.first_use:
                self.first_use[id(t)] = self._site(sys._getframe(2))

    def _inside_custom_function(self) -> bool:
        """True inside a custom `autograd.Function.forward` (grad is off there by design); the
        first op of each call records the call site and the inputs for the backward check.
        `Function.apply` is Python in some torch versions and C++ in others, so the forward is
        recognised by its code object."""
        if self._function_forwards is None:
            self._function_forwards = _custom_function_forwards()
        frame = sys._getframe(3)
        while frame is not None and frame.f_code not in self._function_forwards:
            frame = frame.f_back
        if frame is None:
            return False
        if frame is not self._forward_frame:
            self._forward_frame = frame
            code, local = frame.f_code, frame.f_locals
            ctx = local.get(code.co_varnames[0]) if code.co_argcount else None
            arguments = [local.get(name) for name in code.co_varnames[: code.co_argcount]]
            upstream = [graph_handle(t) for t in tensors_in(arguments, []) if t.requires_grad]
            self.custom_calls.append(CustomCall(
                self._function_forwards[code], self._site(frame.f_back),
                ctx if isinstance(ctx, BackwardCFunction) else None, upstream,
            ))
        return True

    def _site(self, frame) -> Site:
        """The innermost frame outside torch and endtoend, and the model's module running it."""
        torch_function, internal = None, None
        while frame is not None and is_library(frame.f_code.co_filename):
            filename = frame.f_code.co_filename
            if torch_function is None and filename.startswith(TORCH_DIR):
                torch_function = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            if internal is None and not filename.startswith(TORCH_DIR):
                internal = filename.startswith(ENDTOEND_DIR)
            frame = frame.f_back
        if frame is None:
            return Site(None, None, None, torch_function, bool(internal))
        return Site(frame.f_code.co_filename, frame.f_lineno, self._module_of(frame), torch_function, bool(internal))

    def _module_of(self, frame) -> str | None:
        # The module whose method holds the line: the nearest frame whose `self` is in the model.
        while frame is not None:
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                name = self.module_names.get(id(frame.f_locals.get("self")), False)
                if name is not False:
                    return name
            frame = frame.f_back
        return None

    def mark_returned(self, output) -> None:
        """A cut output that the model returns is consumed by whoever uses the output."""
        for t in tensors_in(output, []):
            for cut in self._cuts_of(t):
                cut.consumed = cut.reentered = True
                cut.consumers.add("the model's output")


def _custom_function_forwards() -> dict:
    """{forward code object: class} for every autograd.Function subclass defined so far."""
    forwards, pending = {}, [torch.autograd.Function]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        code = getattr(cls.__dict__.get("forward"), "__code__", None)
        code = code or getattr(getattr(cls.__dict__.get("forward"), "__func__", None), "__code__", None)
        if code is not None and cls is not torch.autograd.Function:
            forwards[code] = cls
    return forwards


