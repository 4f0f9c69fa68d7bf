"""The differentiability audit: is there one differentiable graph from input to loss?

`audit(model, inputs)` answers "which parameters got no gradient, and why" in four steps:

1. **Record the forward.** The forward (and the objective) run under a `TorchFunctionMode`
   that sees every torch call. A call whose inputs require grad is a *cut* when its tensor
   outputs do not (`argmax`, comparisons, integer casts, `.detach()`, `.data`, anything under
   `torch.no_grad()`), when it turns the tensor into a Python value (`.item()`, `.tolist()`,
   `int(t)`), when its derivative is zero almost everywhere (`round`, `sign`, ...), or when
   it is a random op whose own backward node returns zeros whatever gradient arrives (a
   sample that is not reparameterised: `bernoulli`, `normal`, `poisson`). Each cut keeps the
   user's file and line, the module whose code holds that line, the autograd nodes of its
   inputs, and whether anything later consumed its output (an unused index output, such as
   the one of `topk` in top-k routing, cuts nothing), whether its values came back into the
   computation (reading `.shape` or `.dim()` does not) and whether they became a position
   (a slice bound: the crop fix).
2. **Backward.** One plain backward of the objective gives every parameter's gradient as
   training sees it (`.grad` is restored afterwards). Gradients that are exactly zero are
   probed again with random projections of the outputs, then once more with the all-zero
   parameters nudged, which tells a zero-initialised head (the first update lifts it) from
   a truly dead unit.
3. **Join.** Walking the autograd graph back from each cut's inputs to the `AccumulateGrad`
   nodes gives the parameters upstream of it. A cut is an error when some of them are
   starved (gradient None or dead), and info when they get gradient by another path
   (straight-through estimators, hard Gumbel-softmax, Hungarian matching on a detached cost).
4. **Report.** Starved parameters no cut explains are `unused` (gradient None) or `dead`
   (zero). Everything the audit touched (parameters, buffers, `.grad`, modes, requires_grad
   flags, RNG state) is restored, so training after an audit is bit-identical.

The function level does not see `autograd.Function.apply`. The ops inside a custom
`forward` run with grad disabled; they are recognised by the forward's code object on the
stack (not cuts), the call site is recorded, and the Function's backward is checked by a
hook on its graph node: an input it returns None or zeros for is a `no_backward` finding.
A dispatch-level mode was not needed: ops the function level cannot see run inside a call
it does see, whose outputs tell whether gradient survives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import io
import json
import os
import re
import sys
import sysconfig
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.function import BackwardCFunction
from torch.overrides import TorchFunctionMode

from endtoend.errors import UsageError
from endtoend.relax.registry import fix_for

# Calls that turn a tensor into a Python value: nothing computed from it has a gradient.
_ESCAPES = {"item", "tolist", "__int__", "__float__", "__bool__", "__index__", "__complex__"}
# Derivative zero almost everywhere: the output requires grad, but backward gives exact zeros.
_ZERO_DERIVATIVE = {"round", "floor", "ceil", "trunc", "fix", "sign", "sgn"}
# These read only shape and dtype, so an output without grad is not a cut.
_SHAPE_ONLY = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "grad", "grad_fn",
    "expand_as", "view_as", "reshape_as", "type_as",  # the argument only lends its shape or dtype
}
# Reading metadata (shape, size, dim, dtype, device, ...) reads no values: an int, a
# torch.Size or a dtype read from a cut's output does not carry its values back into the
# computation (a distribution's argument check runs `value == value`, then `.dim()`).
_METADATA = {
    "shape", "size", "dim", "ndimension", "ndim", "__len__", "numel", "nelement", "dtype", "device",
    "layout", "is_floating_point", "is_complex", "is_signed", "is_contiguous", "stride", "storage_offset",
    "element_size", "itemsize", "nbytes", "get_device", "is_cuda", "is_cpu", "is_meta", "is_sparse",
    "is_quantized", "is_nested", "is_inference", "requires_grad", "is_leaf", "names", "data_ptr",
    "untyped_storage", "grad_fn", "_version",
}
_METADATA_TYPES = (torch.Size, torch.dtype, torch.device, torch.layout)
# Torch dispatches `a == b` as Tensor.__eq__ but `a > b` as Tensor.gt: show (and look up)
# every comparison by its method name.
_DUNDER_METHODS = {"__eq__": "eq", "__ne__": "ne", "__lt__": "lt", "__le__": "le", "__gt__": "gt", "__ge__": "ge"}
# Kinds whose gradient arrives but is exactly zero (the parameters stay in the graph).
_ZERO_GRADIENT_KINDS = ("zero_derivative", "sampled", "empty")
_CASTS = {"to", "type", "long", "int", "short", "byte", "char", "bool"}
_NUMPY = {"Tensor.numpy", "Tensor.__array__"}
# How many random projections of the outputs re-check a zero gradient before the nudge.
_PROBES = 1
_NUDGE = 1e-3

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_ENDTOEND_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB_DIR = sysconfig.get_paths()["stdlib"] + os.sep


# ----------------------------------------------------------------------------- the report


@dataclass
class Finding:
    """One problem (or one intended cut) found by the audit."""

    severity: str  # "error" | "warning" | "info"
    kind: str  # cut, no_backward, unused, dead, zero_init, no_data, frozen, ...
    op: str | None
    module: str | None
    file: str | None
    line: int | None
    message: str
    fix: str | None
    parameters: list[str] = field(default_factory=list)  # the parameters it concerns

    @property
    def where(self) -> str:
        if self.file is None:
            return ""
        path = self.file
        with contextlib.suppress(ValueError):
            relative = os.path.relpath(path)
            path = path if relative.startswith("..") else relative
        return f"{path}:{self.line}"


@dataclass
class AuditReport:
    """What `audit` found; `ok` is True when no finding is an error."""

    findings: list[Finding]
    unused_parameters: list[str]
    dead_parameters: list[str]
    frozen_parameters: list[str]
    grad_norms: dict[str, float | None]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "unused_parameters": self.unused_parameters,
            "dead_parameters": self.dead_parameters,
            "frozen_parameters": self.frozen_parameters,
            "grad_norms": self.grad_norms,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in ("error", "warning", "info")}
        learning = sum(1 for v in self.grad_norms.values() if v)
        return (
            f"audit: {'OK' if self.ok else 'NOT OK'} - {counts['error']} errors, "
            f"{counts['warning']} warnings, {counts['info']} info; "
            f"{learning}/{len(self.grad_norms)} trainable parameters get gradient, "
            f"{len(self.frozen_parameters)} frozen"
        )

    def __rich_console__(self, console, options):
        """A table on a wide console; one block per finding on a narrow one."""
        from rich.padding import Padding
        from rich.table import Table
        from rich.text import Text

        style = {"error": "bold red", "warning": "yellow", "info": "dim"}
        if self.findings and options.max_width < 110:
            for f in self.findings:
                head = Text.assemble((f.severity, style[f.severity]), f"  {f.kind} {f.op or ''}  {f.where}")
                if f.module:
                    head.append(f"  ({f.module})")
                yield head
                yield Padding(Text(f.message + (f"\nfix: {f.fix}" if f.fix else "")), (0, 0, 0, 2), expand=False)
        elif self.findings:
            # The message and the fix get the width; a module column only when there is one.
            with_module = any(f.module for f in self.findings)
            table = Table(show_lines=True, expand=True)
            table.add_column("severity", no_wrap=True)
            for column, cells in (("where", [f.where for f in self.findings]),
                                  ("finding", [f"{f.kind} {f.op or ''}".strip() for f in self.findings])):
                table.add_column(column, overflow="fold", min_width=min(max(map(len, cells)), 36))
            if with_module:
                table.add_column("module", overflow="fold", ratio=1)
            table.add_column("message", overflow="fold", ratio=3)
            table.add_column("fix", overflow="fold", ratio=2)
            for f in self.findings:
                row = [f"[{style[f.severity]}]{f.severity}[/]", f.where, f"{f.kind} {f.op or ''}".strip()]
                row += [f.module or ""] if with_module else []
                table.add_row(*row, f.message, f.fix or "")
            yield table
        yield Text(self.summary())

    def render(self, console=None) -> None:
        """Print the findings table (to `console`, or a new rich Console on stdout)."""
        from rich.console import Console

        (console or Console()).print(self)

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=160, no_color=True).print(self)
        return buffer.getvalue()


# ----------------------------------------------------------------------------- the audit


def audit(
    model: nn.Module,
    inputs: Any,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    targets: Any = None,
) -> AuditReport:
    """Check that every trainable parameter of `model` gets gradient from the objective.

    `inputs` is a tensor, a tuple of positional inputs, or a dict of keyword inputs. The
    objective is `loss_fn(output, targets)` when given, else the model's output when it is a
    scalar, else a fixed random projection of the outputs (so every output element carries
    gradient). The model, its buffers, `.grad`, modes and the RNG are left as found.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module  # the wrapper's forward would synchronise and its backward reduce
    named = list(model.named_parameters())
    trainable = [(name, p) for name, p in named if p.requires_grad]
    input_leaves = [t for t in _tensors_in(inputs, []) if t.requires_grad and t.grad_fn is None]
    with _preserved(model, input_leaves):
        for _, p in named:
            p.grad = None  # _grad reads what one backward accumulates
        recorder = _Recorder(model)
        with recorder:
            output = _call(model, inputs)
            recorder.mark_returned(output)
            objective = _objective(output, loss_fn, targets)
        custom_nodes = _hook_custom_functions(objective) if recorder.custom_calls else []
        grads, backward_error = _gradients(objective, [p for _, p in trainable])
        zero = [p for (_, p), g in zip(trainable, grads) if g is not None and not _values(g).any()]
        dead = _probe_zero_gradients(output, zero)
        zero_weights, lifted = (_lifted_by_nudging_zero_weights(model, inputs, loss_fn, targets, dead)
                                if dead else ([], set()))
        return _report(
            model, recorder, trainable, [n for n, p in named if not p.requires_grad],
            grads, dead - lifted, (zero_weights, lifted), custom_nodes, backward_error,
        )


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise UsageError(
        f"audit: inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
        f"inputs, got {type(inputs).__name__}"
    )


def _objective(output: Any, loss_fn, targets) -> torch.Tensor | None:
    # The loss comes first when given: it is what training optimises (and a batch of one
    # can make any output a scalar).
    value = loss_fn(output, targets) if loss_fn is not None else output
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.reshape(())
    if loss_fn is not None and isinstance(value, torch.Tensor):
        return value.sum()  # an unreduced loss
    return _random_projection(value, seed=0)  # several outputs, or a dict of losses


def _random_projection(output: Any, seed: int) -> torch.Tensor | None:
    """sum(output * fixed noise) over all floating outputs: every element carries gradient."""
    generator = torch.Generator().manual_seed(seed)
    total = None
    for t in _tensors_in(output, []):
        if t.is_floating_point() and t.requires_grad:
            weights = torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
            term = (t * weights).sum()
            total = term if total is None else total + term
    return total


# ----------------------------------------------------------------------------- step 1: record


@dataclass(eq=False)
class _Site:
    file: str | None
    line: int | None
    module: str | None
    torch_function: str | None = None  # innermost torch frame, e.g. "Normal.sample"
    internal: bool = False  # ran inside endtoend itself (a relaxation's own straight-through cut)


@dataclass(eq=False)
class _Cut:
    kind: str  # non_differentiable | escape | no_grad | zero_derivative | empty
    op: str  # what the user sees, e.g. "argmax", "Tensor.max.indices"
    lookup: str  # the name given to relax.registry.fix_for
    site: _Site
    upstream: list = field(default_factory=list)  # grad_fn nodes, or leaf tensors
    consumers: set[str] = field(default_factory=set)
    consumed: bool = False
    # Did its values flow back into differentiable computation (rather than only into
    # Python control flow, such as a validity check)? Unknown for Python values: assume so.
    reentered: bool = False
    # Did its values become a position: a slice bound (`x[:, i:i + 4]`) or narrow's start?
    as_position: bool = False


@dataclass(eq=False)
class _CustomCall:
    cls: type
    site: _Site
    ctx: Any  # the backward node (old-style forward(ctx, ...)), else None
    upstream: list


class _Recorder(TorchFunctionMode):
    """Sees every torch call of the forward and notes the cuts, with the user's file and line."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.parameter_ids = {id(p) for p in model.parameters()}
        self.module_names = {id(m): name or None for name, m in model.named_modules()}
        self.cuts: dict[tuple, _Cut] = {}
        self.custom_calls: list[_CustomCall] = []
        self.first_use: dict[int, _Site] = {}
        self.internal_errors: list[str] = []
        # id(tensor) -> (weak reference, the cuts it descends from without gradient)
        self._watched: dict[int, tuple[weakref.ref, set[_Cut]]] = {}
        self._forward_frame = None
        self._function_forwards: dict | None = None  # forward code -> custom Function class

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        try:
            inputs = _tensors_in(kwargs, _tensors_in(args, []))
            if inputs:
                if self._watched:
                    self._follow_consumers(func, args, kwargs, inputs, result)
                self._note_parameter_use(inputs)
                grad_inputs = [t for t in inputs if t.requires_grad]
                if grad_inputs:
                    self._check_for_cut(func, args, kwargs, inputs, grad_inputs, result)
        except Exception as error:  # never let the audit break the user's forward
            self.internal_errors.append(f"{_op_name(func)}: {type(error).__name__}: {error}")
        return result

    def _check_for_cut(self, func, args, kwargs, inputs, grad_inputs, result) -> None:
        name = _bare_name(func)
        outputs = _tensors_in(result, [])
        if name in _CASTS and args and isinstance(args[0], torch.Tensor) and not args[0].requires_grad:
            return  # `x.to(other)`: the argument with gradient only lends its dtype and device
        if not torch.is_grad_enabled():
            if self._inside_custom_function():
                return  # a custom Function's forward: its backward decides, checked later
            blocked = [t for t in outputs if not t.requires_grad]
            if blocked or name in _ESCAPES:  # not: metadata (ndim, shape), in-place weight updates
                self._record("no_grad", func, name, grad_inputs, blocked, consumed=not outputs)
        elif name in _ESCAPES:
            self._record("escape", func, name, grad_inputs, [], consumed=True)
        elif any(not t.requires_grad for t in outputs):
            if name not in _SHAPE_ONLY:
                blocked, partial = _blocked_outputs(inputs, outputs)
                if blocked:
                    self._record("non_differentiable", func, name, grad_inputs, blocked, partial=partial)
        elif outputs and all(t.numel() == 0 for t in outputs) and any(t.numel() for t in grad_inputs):
            # An empty selection (no token routed to this expert, no box on this level): the
            # inputs get exactly zero gradient from this use, for this batch only.
            self._record("empty", func, name, grad_inputs, outputs)
        elif _is_random(name) and _ignores_incoming_gradient(name, outputs, grad_inputs):
            # A sample (bernoulli, normal, poisson, exponential_, ...) whose backward returns
            # zeros whatever gradient arrives: not reparameterised.
            self._record("sampled", func, name, grad_inputs, outputs)
        elif _lookup_name(name) in _ZERO_DERIVATIVE or (name in ("div", "divide", "div_") and kwargs.get("rounding_mode")):
            self._record("zero_derivative", func, name, grad_inputs, outputs)

    def _record(self, kind, func, name, grad_inputs, outputs, consumed=False, partial=False) -> None:
        site = self._site(sys._getframe(3))
        if site.internal:
            return  # the cuts inside endtoend.relax are its estimators, intended by construction
        op = _op_name(func) + (".indices" if partial else "")
        lookup = _lookup_name(name) + (".indices" if partial else "")
        if name in _CASTS and kind == "non_differentiable":
            lookup = "to_integer"
        elif kind == "zero_derivative" and name.startswith("div"):
            lookup = "floor_divide"  # div(rounding_mode=...) rounds
        key = (kind, op, site.file, site.line, site.module)
        cut = self.cuts.get(key)
        if cut is None:
            cut = self.cuts[key] = _Cut(kind, op, lookup, site)
        cut.upstream.extend(_graph_handle(t) for t in grad_inputs)
        cut.consumed |= consumed
        cut.reentered |= consumed or kind in _ZERO_GRADIENT_KINDS
        self._watch(outputs, {cut})

    def _watch(self, tensors, cuts: set[_Cut]) -> None:
        for t in tensors:
            entry = self._watched.get(id(t))
            known = entry[1] if entry is not None and entry[0]() is t else set()
            self._watched[id(t)] = (weakref.ref(t), known | cuts)

    def _cuts_of(self, t) -> set[_Cut]:
        entry = self._watched.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else set()

    def _follow_consumers(self, func, args, kwargs, inputs, result) -> None:
        """Mark cuts whose outputs this call consumes; keep following the gradient-free chain,
        so `.detach().cpu().numpy()` is seen as a trip through NumPy, and note the cuts whose
        values become positions (slice bounds)."""
        bare = _bare_name(func)
        positions = _positions(bare, args, kwargs)
        cuts: set[_Cut] = set()
        for t in inputs:
            cuts |= self._cuts_of(t)
        at_positions: set[_Cut] = set()
        for t in positions:
            at_positions |= self._cuts_of(t)
        if not cuts and not at_positions:
            return
        outputs = _tensors_in(result, [])
        # Values flow back into the computation through a tensor that requires grad, or into
        # Python values and arrays (item, tolist, numpy) that may come back: assume they do.
        # A bare bool (an `if`, an argument check) only steers control flow, and metadata
        # (`.dim()`, `.shape`, `.dtype`) carries no values.
        reentered = any(t.requires_grad for t in outputs) or (
            not outputs and result is not None and not isinstance(result, (bool, *_METADATA_TYPES))
            and bare not in _METADATA)
        name = _op_name(func)
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
            upstream = [_graph_handle(t) for t in _tensors_in(arguments, []) if t.requires_grad]
            self.custom_calls.append(_CustomCall(
                self._function_forwards[code], self._site(frame.f_back),
                ctx if isinstance(ctx, BackwardCFunction) else None, upstream,
            ))
        return True

    def _site(self, frame) -> _Site:
        """The innermost frame outside torch and endtoend, and the model's module running it."""
        torch_function, internal = None, None
        while frame is not None and _is_library(frame.f_code.co_filename):
            filename = frame.f_code.co_filename
            if torch_function is None and filename.startswith(_TORCH_DIR):
                torch_function = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            if internal is None and not filename.startswith(_TORCH_DIR):
                internal = filename.startswith(_ENDTOEND_DIR)
            frame = frame.f_back
        if frame is None:
            return _Site(None, None, None, torch_function, bool(internal))
        return _Site(frame.f_code.co_filename, frame.f_lineno, self._module_of(frame), torch_function, bool(internal))

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
        for t in _tensors_in(output, []):
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


_library_cache: dict[str, bool] = {}


def _is_library(filename: str) -> bool:
    known = _library_cache.get(filename)
    if known is None:
        known = _library_cache[filename] = (
            filename.startswith((_TORCH_DIR, _ENDTOEND_DIR, _STDLIB_DIR, "<frozen"))
        )
    return known


def _tensors_in(obj: Any, found: list) -> list:
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _tensors_in(item, found)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            _tensors_in(item, found)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _tensors_in(getattr(obj, f.name), found)
    return found


def _blocked_outputs(inputs: list, outputs: list) -> tuple[list, bool]:
    """The outputs without gradient that cut, and whether they are the index outputs of an
    op whose other outputs carry gradient (the indices of max(dim), sort, topk).

    When some outputs carry gradient, an op with one output per input (broadcast_tensors,
    meshgrid, atleast_1d: as many outputs as tensor inputs) cuts only at the outputs whose
    input required grad; an output of an input that never had gradient (the constant scale
    of Normal(h, 1.0), the integer sample given to Categorical.log_prob) cuts nothing.
    Otherwise every output without gradient cuts (the indices of max(dim), sort, topk)."""
    blocked = [t for t in outputs if not t.requires_grad]
    if len(blocked) == len(outputs):
        return blocked, False
    if len(inputs) == len(outputs):
        blocked = [t for t, source in zip(outputs, inputs) if not t.requires_grad and source.requires_grad]
    return blocked, bool(blocked) and not any(t.is_floating_point() or t.is_complex() for t in blocked)


_random_ops: dict[str, bool] = {}


def _is_random(name: str) -> bool:
    """Whether the aten op of this name draws random numbers (torch tags those ops
    `nondeterministic_seeded`: bernoulli, normal, poisson, exponential_, dropout, ...)."""
    known = _random_ops.get(name)
    if known is None:
        known = False
        if name and not name.startswith("__"):
            try:
                packet = getattr(torch.ops.aten, name)
                known = any(torch.Tag.nondeterministic_seeded in getattr(packet, overload).tags
                            for overload in packet.overloads())
            except Exception:  # no aten op of that name (a Python-level function, a property)
                known = False
        _random_ops[name] = known
    return known


def _ignores_incoming_gradient(name: str, outputs: list, grad_inputs: list) -> bool:
    """True when the op's own backward node returns exact zeros for a NaN gradient: its
    derivative is zero by construction (a sample drawn without reparameterisation), not by
    the values of this batch (dropout multiplies the NaN, and passes it on). One call of
    that node, which frees nothing."""
    if len(outputs) != 1 or outputs[0].grad_fn is None:
        return False
    node = outputs[0].grad_fn
    in_place = name.endswith("_") and not name.endswith("__")  # x.bernoulli_(): a new node on x
    if not in_place and any(t is outputs[0] or _graph_handle(t) is node for t in grad_inputs):
        return False  # no node of its own: an input returned as it is (dropout in eval mode)
    try:
        with torch.no_grad():
            grads = node(torch.full_like(outputs[0], float("nan")))
    except Exception:  # a node that cannot be called on its own: assume it passes gradient on
        return False
    grads = [g for g in (grads if isinstance(grads, tuple) else (grads,)) if isinstance(g, torch.Tensor)]
    return bool(grads) and all(not _values(g).any() for g in grads)


def _positions(name: str, args: tuple, kwargs: dict) -> list:
    """The tensors a call uses as positions: slice bounds in an index (`x[:, i:i + 4]`) and
    the start of narrow. (A tensor of indices, `x[idx]`, is a gather: not counted.)"""
    found: list = []
    if name in ("__getitem__", "__setitem__") and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        for item in index:
            if isinstance(item, slice):
                _tensors_in([item.start, item.stop, item.step], found)
    elif name == "narrow":
        _tensors_in([kwargs.get("start", args[2] if len(args) > 2 else None)], found)
    return found


def _graph_handle(t: torch.Tensor):
    """Where the graph walk starts for `t`: its grad_fn, or the leaf itself. A view made under
    no_grad has no grad_fn of its own, so walk to its base."""
    while t.grad_fn is None and t._base is not None:
        t = t._base
    return t.grad_fn if t.grad_fn is not None else t


def _bare_name(func) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # property getters, such as Tensor.data
        return getattr(getattr(func, "__self__", None), "__name__", "__get__")
    return _DUNDER_METHODS.get(name, name)


def _lookup_name(name: str) -> str:
    """The name given to the registry: an in-place op as its out-of-place form ("round_" is
    "round"); a dunder keeps its underscores."""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _op_name(func) -> str:
    name = _bare_name(func)
    qualname = getattr(func, "__qualname__", "")
    is_method = qualname.startswith(("TensorBase.", "Tensor.")) or getattr(func, "__name__", "") == "__get__"
    return f"Tensor.{name}" if is_method else name


# ----------------------------------------------------------------------------- step 2: gradients


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
                    i for i, g in enumerate(grad_inputs) if g is None or not _values(g).any()
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
    except RuntimeError as error:  # e.g. an op whose derivative is not implemented
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


def _values(gradient: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: sparse ones (nn.Embedding(sparse=True)) included."""
    return gradient.coalesce().values() if gradient.is_sparse else gradient.detach()


def _probe_zero_gradients(output, zero: list[torch.Tensor]) -> set[int]:
    """Ids of the parameters whose gradient stays exactly zero under random projections of
    the outputs too: a zero that only comes from the loss's current value is not dead."""
    still_zero = list(zero)
    for seed in range(1, _PROBES + 1):
        projection = _random_projection(output, seed)
        if projection is None or not still_zero:
            break
        grads = _grad(projection, still_zero)
        still_zero = [p for p, g in zip(still_zero, grads) if g is None or not _values(g).any()]
    return {id(p) for p in still_zero}


def _lifted_by_nudging_zero_weights(model, inputs, loss_fn, targets, dead_ids) -> tuple[list, set[int]]:
    """Nudge the all-zero parameters (zero-initialised heads, last norms of residual branches)
    and probe once more: the dead candidates that now get gradient were starved by that zero,
    which the first update lifts. Returns (the zero parameters, ids of the lifted ones)."""
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
    output = _call(model, inputs)
    terms = [t for t in (_objective(output, loss_fn, targets), _random_projection(output, seed=_PROBES + 1))
             if isinstance(t, torch.Tensor) and t.requires_grad]
    if not terms:
        return zero_weights, set()
    grads = _grad(sum(terms), candidates)  # one backward for both probes
    return zero_weights, {id(p) for p, g in zip(candidates, grads) if g is not None and _values(g).any()}


# ----------------------------------------------------------------------------- step 3: join


def _parameters_above(starts, wanted: set[int], memo: dict) -> set[int]:
    """Ids in `wanted` of the parameters reachable backwards from `starts` (autograd nodes,
    or leaf tensors) through `next_functions`; memoised per node, iterative for deep graphs."""
    found: set[int] = set()
    for start in starts:
        if isinstance(start, torch.Tensor):
            if id(start) in wanted:
                found.add(id(start))
            continue
        stack = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if node in memo:
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in children if child not in memo)
                continue
            above = set()
            variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf itself
            if variable is not None and id(variable) in wanted:
                above.add(id(variable))
            for child in children:
                above |= memo[child]
            memo[node] = frozenset(above)
        found |= memo[start]
    return found


def _report(model, recorder, trainable, frozen, grads, dead_ids, lifted, custom_nodes, backward_error) -> AuditReport:
    names = {id(p): n for n, p in trainable}
    none_ids = {id(p) for (_, p), g in zip(trainable, grads) if g is None}
    starved = none_ids | dead_ids
    findings: list[Finding] = []
    explained: set[int] = set()
    no_data: set[int] = set()  # zero only because this batch routed nothing to them
    memo: dict = {}

    def starved_above(starts) -> set[int]:
        return _parameters_above(starts, starved, memo) if starved else set()

    cuts = [cut for cut in recorder.cuts.values() if cut.consumed]
    # A cut with a gradient-free output can only cause None gradients; a zero-derivative op
    # or an empty selection keeps the parameters in the graph: zero gradients.
    hits = [starved_above(cut.upstream) & (dead_ids if cut.kind in _ZERO_GRADIENT_KINDS else none_ids)
            for cut in cuts]
    # When a cut whose values flow on into the computation explains a starved parameter, the
    # cuts that only fed Python control flow (say a distribution's argument check) do not.
    fed_on = set().union(*(hit for cut, hit in zip(cuts, hits) if cut.reentered))
    for cut, hit in zip(cuts, hits):
        only_control_flow = not cut.reentered and bool(hit & fed_on)
        if not cut.reentered:
            hit -= fed_on
        explained |= hit
        if cut.kind == "empty":
            if hit:
                no_data |= hit
                findings.append(_no_data_finding(cut, sorted(names[i] for i in hit)))
            continue
        if hit or cut.reentered:  # a check that only steers Python control flow and starves nothing: noise
            findings.append(_cut_finding(cut, sorted(names[i] for i in hit), only_control_flow))

    custom_sites = _custom_sites(recorder.custom_calls)
    reached = set()
    for node, blocked in custom_nodes:
        reached.add(node)
        for index in sorted(set(blocked)):
            child = node.next_functions[index][0]
            hit = starved_above([child]) if child is not None else set()
            if hit:
                explained |= hit
                findings.append(_no_backward_finding(node, index, custom_sites, sorted(names[i] for i in hit)))
    for call in recorder.custom_calls:
        # A custom Function whose outputs never entered the objective's graph (outputs marked
        # non-differentiable, or returned without grad).
        if call.ctx is not None and call.ctx not in reached and none_ids:
            hit = (starved_above(call.upstream) & none_ids) - explained
            if hit:
                explained |= hit
                findings.append(Finding(
                    "error", "no_backward", call.cls.__name__, call.site.module, call.site.file, call.site.line,
                    f"the outputs of custom autograd.Function {call.cls.__name__} carry no gradient, so "
                    f"{_list(sorted(names[i] for i in hit))} upstream of it learn nothing",
                    _CUSTOM_FUNCTION_FIX, sorted(names[i] for i in hit),
                ))

    findings += _leftover_findings(model, recorder, names, none_ids - explained, dead_ids - explained, lifted)
    if frozen:
        findings.append(Finding(
            "info", "frozen", None, None, None, None,
            f"{len(frozen)} parameters have requires_grad=False and will not train: {_list(frozen)}",
            None, list(frozen),
        ))
    nonfinite = [names[id(p)] for (_, p), g in zip(trainable, grads) if g is not None and not _values(g).isfinite().all()]
    if nonfinite:
        findings.append(Finding(
            "error", "nonfinite", None, None, None, None,
            f"non-finite (NaN or Inf) gradient in {_list(nonfinite)}", "check the loss and the inputs for NaN/Inf",
            nonfinite,
        ))
    if backward_error:
        findings.append(Finding("error", "backward_error", None, None, None, None,
                                f"backward failed: {backward_error}",
                                "replace the op that has no derivative (see the message)", []))
    findings += [Finding("warning", "internal", None, None, None, None, f"audit could not inspect {e}", None)
                 for e in recorder.internal_errors[:5]]

    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: (order[f.severity], f.file or "~", f.line or 0))
    return AuditReport(
        findings=findings,
        unused_parameters=[n for n, p in trainable if id(p) in none_ids],
        dead_parameters=[n for n, p in trainable if id(p) in dead_ids - no_data],
        frozen_parameters=list(frozen),
        grad_norms={n: (None if g is None else float(_values(g).float().norm())) for (n, _), g in zip(trainable, grads)},
    )


# ----------------------------------------------------------------------------- step 4: findings

_CUSTOM_FUNCTION_FIX = (
    "return a gradient from backward for every input that needs one (check it with "
    "torch.autograd.gradcheck); for a non-differentiable forward use a straight-through "
    "backward that returns grad_output"
)


def _cut_finding(cut: _Cut, starved: list[str], only_control_flow: bool = False) -> Finding:
    what = {
        "non_differentiable": f"`{cut.op}` returns a tensor without gradient",
        "escape": f"`{cut.op}` turns the tensor into a Python value; nothing computed from it has a gradient",
        "no_grad": f"`{cut.op}` ran under torch.no_grad() (or inference_mode / set_grad_enabled(False))"
                   + _inside(cut.site.torch_function) + ", so its result has no gradient",
        "zero_derivative": f"`{cut.op}` has zero derivative almost everywhere: the gradient through it is exactly zero",
        "sampled": f"`{cut.op}` draws a random sample whose gradient with respect to its inputs (the "
                   "distribution's parameters) is exactly zero: it is not reparameterised",
    }[cut.kind]
    if cut.consumers & _NUMPY:
        what += ", and the value goes through NumPy"
    if cut.as_position:
        what += ", and the value is used as a position (a slice bound)"
    op = "no_grad" if cut.kind == "no_grad" else cut.op
    if starved:
        return Finding("error", "cut", op, cut.site.module, cut.site.file, cut.site.line,
                       f"{what}; {_list(starved)} upstream of it get no gradient", _cut_fix(cut), starved)
    why = ("it only feeds Python control flow; the parameters above it are starved by another cut, reported apart"
           if only_control_flow else
           "the parameters upstream of it still get gradient by another path, so the cut looks intended")
    return Finding("info", "cut", op, cut.site.module, cut.site.file, cut.site.line, f"{what}; {why}", _cut_fix(cut), [])


def _inside(torch_function: str | None) -> str:
    # Name the torch function that disabled grad (say Normal.sample), not a module's forward.
    if not torch_function or torch_function.endswith(("forward", "_call_impl")):
        return ""
    return f" inside {torch_function}"


def _no_data_finding(cut: _Cut, params: list[str]) -> Finding:
    return Finding(
        "info", "no_data", cut.op, cut.site.module, cut.site.file, cut.site.line,
        f"`{cut.op}` got an empty selection in this batch (data-dependent routing), so {_list(params)} "
        "get zero gradient from this batch only; audit a larger batch to check them", None, params,
    )


_SAMPLER_FIX = (
    "use .rsample() (the reparameterised sample) or endtoend.relax.reparameterize; for discrete "
    "distributions endtoend.relax.gumbel_softmax or relaxed_bernoulli"
)
# A sampler the registry has no relaxation for (poisson, exponential_, geometric_, ...).
_UNRELAXED_SAMPLER_FIX = (
    "draw from a distribution with a reparameterised sample (Distribution.rsample), or train the "
    "parameters with a score-function estimator: weight log_prob(sample) by a detached reward (REINFORCE)"
)


def _cut_fix(cut: _Cut) -> str:
    if cut.consumers & _NUMPY:
        return "keep the computation in torch ops (NumPy arrays carry no gradient), e.g. torch.linalg / torch.special"
    if cut.as_position:
        # A crop or window placed at a computed integer: no relaxation of the op that made the
        # integer helps, since slicing itself has no gradient with respect to the position.
        return fix_for("integer_index") or "sample the window with bilinear interpolation (F.grid_sample)"
    if cut.kind == "no_grad":
        sampler = "sample" in (cut.site.torch_function or "")
        return (fix_for(cut.site.torch_function or "") or
                (_SAMPLER_FIX if sampler else
                 "compute it outside torch.no_grad(); to freeze parameters on purpose, call requires_grad_(False) on them"))
    registered = fix_for(cut.lookup)
    if registered:
        return registered
    if cut.kind == "sampled":
        return _UNRELAXED_SAMPLER_FIX
    if cut.kind == "escape":
        return "keep it a tensor: use the tensor in the computation instead of a Python number (torch.where for data-dependent choices)"
    if cut.lookup == "detach":
        return "remove .detach(); for a straight-through estimator write x + (f(x) - x).detach()"
    if cut.lookup == "data":
        return "use the tensor itself: .data bypasses autograd"
    if cut.lookup in ("tensor", "as_tensor", "from_numpy", "new_tensor"):
        return "don't rebuild a tensor from values; compute on the original tensor with torch ops"
    return "replace it with a differentiable op, or give the parameters above it another path to the loss"


def _custom_sites(calls: list[_CustomCall]) -> dict:
    sites: dict = {}
    for call in calls:
        if call.ctx is not None:
            sites[call.ctx] = call.site
        sites.setdefault(call.cls, call.site)
    return sites


def _no_backward_finding(node, index: int, sites: dict, starved: list[str]) -> Finding:
    cls = node._forward_cls
    site = sites.get(node) or sites.get(cls) or _Site(None, None, None)
    return Finding(
        "error", "no_backward", cls.__name__, site.module, site.file, site.line,
        f"the backward of custom autograd.Function {cls.__name__} returns None or zeros for its "
        f"input {index}, so {_list(starved)} upstream of it get no gradient",
        _CUSTOM_FUNCTION_FIX, starved,
    )


def _leftover_findings(model, recorder, names, unused_ids, dead_ids, lifted) -> list[Finding]:
    """Starved parameters that no cut explains, one finding per module (unused) or per line
    of first use (dead, zero_init)."""
    findings = []
    trained = {names[i].rpartition(".")[0] for i in names if i not in unused_ids}
    # One finding per largest submodule whose trainable parameters are all unused (a whole
    # unused decoder is one finding, not fifty).
    total, unused = Counter(), Counter()
    for i, name in names.items():
        for prefix in _prefixes(name):
            total[prefix] += 1
            unused[prefix] += i in unused_ids
    groups: dict[tuple[str, bool], list[str]] = {}
    for i in unused_ids:
        module = next(prefix for prefix in _prefixes(names[i]) if unused[prefix] == total[prefix])
        container = _routed_container(model, module, trained)
        key = (container, True) if container is not None else (module, False)
        groups.setdefault(key, []).append(names[i])
    for (module, routed), params in sorted(groups.items()):
        params.sort()
        file, line = _definition_site(model, params[0])
        touched = any(i in recorder.first_use for i in names if names[i] in params)
        how = ("used in the forward, but nothing computed from them reaches the objective" if touched
               else "never used in the forward pass")
        if routed:
            findings.append(Finding(
                "warning", "unused", None, module or None, file, line,
                f"{_list(params)}: {how}, while their siblings in {module} train - likely routed by "
                "data; audit a larger batch to check", None, params,
            ))
        else:
            findings.append(Finding(
                "error", "unused", None, module or None, file, line, f"{_list(params)}: {how} (gradient None)",
                "use its output in the loss, delete it, or freeze it with requires_grad_(False)", params,
            ))
    for (site, params) in _by_first_use(recorder, names, dead_ids):
        findings.append(Finding(
            "error", "dead", None, site.module, site.file, site.line,
            f"{_list(params)}: gradient exactly zero over {_PROBES + 2} probes - what they multiply is "
            "always zero (a dead ReLU before them, a zero initial state) or the gradient arriving is "
            "(a saturated activation or a zero-derivative op after them)",
            "check the initialisation and activations (LeakyReLU/GELU, normalisation before the activation)",
            params,
        ))
    zero_weights, lifted_ids = lifted
    if lifted_ids:
        # Located where the zero weight is used: that is the line to look at, if anywhere.
        site = next((recorder.first_use[id(p)] for p in zero_weights if id(p) in recorder.first_use),
                    _Site(None, None, None))
        params = sorted(names[i] for i in lifted_ids)
        zeros = [names[id(p)] for p in zero_weights if id(p) in names]
        findings.append(Finding(
            "info", "zero_init", None, site.module, site.file, site.line,
            f"{_list(params)}: zero gradient only because a weight downstream is zero-initialised "
            f"(one of {_list(zeros)}); the first update lifts it", None, params,
        ))
    return findings


def _prefixes(parameter_name: str) -> list[str]:
    """The modules holding a parameter, outermost first: "" (the model), "a", "a.b"."""
    parts = parameter_name.split(".")[:-1]
    return [".".join(parts[:depth]) for depth in range(len(parts) + 1)]


def _by_first_use(recorder, names, ids) -> list[tuple[_Site, list[str]]]:
    groups: dict[tuple, tuple[_Site, list[str]]] = {}
    for i in ids:
        site = recorder.first_use.get(i) or _Site(None, None, None)
        groups.setdefault((site.file, site.line, site.module), (site, []))[1].append(names[i])
    return [(site, sorted(params)) for site, params in groups.values()]


def _routed_container(model: nn.Module, module_name: str, trained: set[str]) -> str | None:
    """The ModuleList/ModuleDict holding this module when some of its other items train (the
    experts of a mixture: which ones run depends on the data), else None."""
    parts = module_name.split(".") if module_name else []
    modules = dict(model.named_modules())
    for depth in range(len(parts) - 1, 0, -1):
        container = ".".join(parts[:depth])
        if isinstance(modules.get(container), (nn.ModuleList, nn.ModuleDict)):
            item = ".".join(parts[: depth + 1])
            siblings_train = any(m.startswith(container + ".") and not (m == item or m.startswith(item + "."))
                                 for m in trained)
            return container if siblings_train else None
    return None


def _definition_site(model: nn.Module, param_name: str) -> tuple[str | None, int | None]:
    """Where the attribute holding the parameter is assigned, `self.<name> = ...`, in the
    innermost user-defined (non-torch) module class on the path to the parameter."""
    parts = param_name.split(".")
    owner, attribute, module = None, None, model
    with contextlib.suppress(OSError, TypeError):  # classes without a source file
        for depth, part in enumerate(parts):
            if not _is_library(inspect.getfile(type(module))):
                owner, attribute = module, part
            if depth < len(parts) - 1:
                module = getattr(module, part, None)
                if not isinstance(module, nn.Module):
                    break
    if owner is None:
        return None, None
    with contextlib.suppress(OSError, TypeError):
        lines, start = inspect.getsourcelines(type(owner))
        pattern = re.compile(rf"\b\w+\.{re.escape(attribute)}\s*(:[^=]*)?=[^=]")
        for offset, text in enumerate(lines):
            if pattern.search(text):
                return inspect.getsourcefile(type(owner)), start + offset
    return None, None


def _list(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ----------------------------------------------------------------------------- leaving no trace


@contextlib.contextmanager
def _preserved(model: nn.Module, input_leaves: list):
    """Restore parameters and buffers (objects and values: BatchNorm running stats), `.grad`
    (of the inputs too), requires_grad flags, train/eval modes and the RNG state."""
    input_grads = [(t, t.grad) for t in input_leaves]
    saved = []
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                # A lazy module's parameters do not exist yet: the forward creates them.
                if tensor is not None and not isinstance(tensor, nn.parameter.UninitializedTensorMixin):
                    saved.append((store, name, tensor, tensor.detach().clone(), tensor.grad, tensor.requires_grad))
    modes = [(m, m.training) for m in model.modules()]
    cuda = sorted({entry[2].device.index or 0 for entry in saved if entry[2].is_cuda})
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        with torch.no_grad():
            for store, name, tensor, value, grad, requires_grad in saved:
                store[name] = tensor
                tensor.copy_(value)
                tensor.grad = grad
                tensor.requires_grad_(requires_grad)
        for module, training in modes:
            module.training = training
        for tensor, grad in input_grads:
            tensor.grad = grad


# ----------------------------------------------------------------------------- the CLI's side
