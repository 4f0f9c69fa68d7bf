"""What a torch call does to gradient: the op tables, op names, and walking nested tensors.

Shared by every step: the recorder classifies calls with these tables, the backward reads
gradient values with `values`, and the findings name ops the way the registry knows them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

# Calls that turn a tensor into a Python value: nothing computed from it has a gradient.
ESCAPES = {"item", "tolist", "__int__", "__float__", "__bool__", "__index__", "__complex__"}
# Derivative zero almost everywhere: the output requires grad, but backward gives exact zeros.
ZERO_DERIVATIVE = {"round", "floor", "ceil", "trunc", "fix", "sign", "sgn"}
# These read only shape and dtype, so an output without grad is not a cut.
SHAPE_ONLY = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "grad", "grad_fn",
    "expand_as", "view_as", "reshape_as", "type_as",  # the argument only lends its shape or dtype
}
# Reading metadata (shape, size, dim, dtype, device, ...) reads no values: an int, a
# torch.Size or a dtype read from a cut's output does not carry its values back into the
# computation (a distribution's argument check runs `value == value`, then `.dim()`).
METADATA = {
    "shape", "size", "dim", "ndimension", "ndim", "__len__", "numel", "nelement", "dtype", "device",
    "layout", "is_floating_point", "is_complex", "is_signed", "is_contiguous", "stride", "storage_offset",
    "element_size", "itemsize", "nbytes", "get_device", "is_cuda", "is_cpu", "is_meta", "is_sparse",
    "is_quantized", "is_nested", "is_inference", "requires_grad", "is_leaf", "names", "data_ptr",
    "untyped_storage", "grad_fn", "_version",
}
METADATA_TYPES = (torch.Size, torch.dtype, torch.device, torch.layout)
# Torch dispatches `a == b` as Tensor.__eq__ but `a > b` as Tensor.gt: show (and look up)
# every comparison by its method name.
DUNDER_METHODS = {"__eq__": "eq", "__ne__": "ne", "__lt__": "lt", "__le__": "le", "__gt__": "gt", "__ge__": "ge"}
# Kinds whose gradient arrives but is exactly zero (the parameters stay in the graph).
ZERO_GRADIENT_KINDS = ("zero_derivative", "sampled", "empty")
CASTS = {"to", "type", "long", "int", "short", "byte", "char", "bool"}
NUMPY = {"Tensor.numpy", "Tensor.__array__"}


def tensors_in(obj: Any, found: list) -> list:
    """Every tensor in `obj`: a tensor, or tuples, lists, dicts and dataclasses of them."""
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            tensors_in(item, found)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            tensors_in(item, found)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            tensors_in(getattr(obj, f.name), found)
    return found


def values(gradient: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: sparse ones (nn.Embedding(sparse=True)) included."""
    return gradient.coalesce().values() if gradient.is_sparse else gradient.detach()


def blocked_outputs(inputs: list, outputs: list) -> tuple[list, bool]:
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


def is_random(name: str) -> bool:
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


def ignores_incoming_gradient(name: str, outputs: list, grad_inputs: list) -> bool:
    """True when the op's own backward node returns exact zeros for a NaN gradient: its
    derivative is zero by construction (a sample drawn without reparameterisation), not by
    the values of this batch (dropout multiplies the NaN, and passes it on). One call of
    that node, which frees nothing."""
    if len(outputs) != 1 or outputs[0].grad_fn is None:
        return False
    node = outputs[0].grad_fn
    in_place = name.endswith("_") and not name.endswith("__")  # x.bernoulli_(): a new node on x
    if not in_place and any(t is outputs[0] or graph_handle(t) is node for t in grad_inputs):
        return False  # no node of its own: an input returned as it is (dropout in eval mode)
    try:
        with torch.no_grad():
            grads = node(torch.full_like(outputs[0], float("nan")))
    except Exception:  # a node that cannot be called on its own: assume it passes gradient on
        return False
    grads = [g for g in (grads if isinstance(grads, tuple) else (grads,)) if isinstance(g, torch.Tensor)]
    return bool(grads) and all(not values(g).any() for g in grads)


def positions(name: str, args: tuple, kwargs: dict) -> list:
    """The tensors a call uses as positions: slice bounds in an index (`x[:, i:i + 4]`) and
    the start of narrow. (A tensor of indices, `x[idx]`, is a gather: not counted.)"""
    found: list = []
    if name in ("__getitem__", "__setitem__") and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        for item in index:
            if isinstance(item, slice):
                tensors_in([item.start, item.stop, item.step], found)
    elif name == "narrow":
        tensors_in([kwargs.get("start", args[2] if len(args) > 2 else None)], found)
    return found


def graph_handle(t: torch.Tensor):
    """Where the graph walk starts for `t`: its grad_fn, or the leaf itself. A view made under
    no_grad has no grad_fn of its own, so walk to its base."""
    while t.grad_fn is None and t._base is not None:
        t = t._base
    return t.grad_fn if t.grad_fn is not None else t


def bare_name(func) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # property getters, such as Tensor.data
        return getattr(getattr(func, "__self__", None), "__name__", "__get__")
    return DUNDER_METHODS.get(name, name)


def lookup_name(name: str) -> str:
    """The name given to the registry: an in-place op as its out-of-place form ("round_" is
    "round"); a dunder keeps its underscores."""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def op_name(func) -> str:
    """The op as the user sees it: `argmax` for a function, `Tensor.argmax` for a method."""
    name = bare_name(func)
    qualname = getattr(func, "__qualname__", "")
    is_method = qualname.startswith(("TensorBase.", "Tensor.")) or getattr(func, "__name__", "") == "__get__"
    return f"Tensor.{name}" if is_method else name
