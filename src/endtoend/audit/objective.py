"""What the audit differentiates: the model called on the inputs, and the objective.

Bad input is refused here, as one `UsageError` line naming what was wrong and what to do,
rather than reported as a broken model. An exception raised by the user's own forward or
loss is theirs: it passes through untouched, with its own traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from endtoend.audit.ops import tensors_in
from endtoend.errors import UsageError

def check_model(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The model's named parameters; a model without any has nothing to audit (fit refuses it too)."""
    if not isinstance(model, nn.Module):
        raise UsageError(f"audit: the model must be a torch.nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    if not named:
        raise UsageError(
            f"audit: the model ({type(model).__name__}) has no parameters, so there is no gradient to "
            "check; audit the module that holds the trainable parameters"
        )
    return named


def check_inputs(inputs: Any) -> None:
    """Refuse inputs the audit cannot call the model with, and an empty batch: zero rows give
    every parameter zero gradient, which would be blamed on the model."""
    if not isinstance(inputs, (torch.Tensor, Mapping, tuple, list)):
        raise UsageError(
            f"audit: inputs must be a tensor, a tuple of positional inputs or a dict of keyword "
            f"inputs, got {type(inputs).__name__}"
        )
    # Only when every batched input is empty: one empty side input (no boxes in this image)
    # next to real rows is data, not an empty batch.
    batched = [t for t in tensors_in(inputs, []) if t.dim() > 0]
    if batched and all(t.shape[0] == 0 for t in batched):
        shapes = ", ".join(str(tuple(t.shape)) for t in batched)
        raise UsageError(
            f"audit: the inputs have 0 rows (shape {shapes}); an empty batch gives no gradient to check, "
            "pass a batch of at least one row"
        )


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs)


def make_objective(loss_fn: Callable | str | None, targets: Any) -> Callable[[Any], torch.Tensor | None]:
    """The objective as a function of the model's output: `loss_fn(output, targets)` when a
    loss is given (a name such as "cross_entropy" as `fit` accepts it; summed if unreduced),
    else the output when it is a scalar, else a fixed random projection of the outputs (so
    every output element carries gradient). Without targets, torch's own losses (which need
    them) are refused, a loss of one argument is called as `loss_fn(output)`, and any other
    loss as `loss_fn(output, None)`."""
    loss = _loss_of_output(loss_fn, targets) if loss_fn is not None else None

    def objective(output: Any) -> torch.Tensor | None:
        _check_output(output, loss is not None)
        # The loss comes first when given: it is what training optimises (and a batch of one
        # can make any output a scalar).
        value = output if loss is None else loss(output)
        if loss is not None and (value is None or isinstance(value, (str, bytes))):
            raise UsageError(f"audit: loss_fn returned {type(value).__name__}; it must return the loss, a tensor")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.reshape(())
        if loss is not None and isinstance(value, torch.Tensor):
            return value.sum()  # an unreduced loss
        return random_projection(value, seed=0)  # several outputs, or a dict of losses

    return objective


def random_projection(output: Any, seed: int) -> torch.Tensor | None:
    """sum(output * fixed noise) over all floating outputs: every element carries gradient."""
    generator = torch.Generator().manual_seed(seed)
    total = None
    for t in tensors_in(output, []):
        if t.is_floating_point() and t.requires_grad:
            weights = torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
            term = (t * weights).sum()
            total = term if total is None else total + term
    return total


def _check_output(output: Any, has_loss: bool) -> None:
    # A Python number is no misuse: it left through `.item()` or `float(t)`, an escape the
    # recorder reports as a cut at its line.
    if tensors_in(output, []) or isinstance(output, (int, float, complex)):
        return
    if has_loss and output is not None and not isinstance(output, (str, bytes)):
        return  # an object of the user's own, which their loss knows how to read
    raise UsageError(
        f"audit: the model returned {type(output).__name__}; the audit needs a tensor (or a tuple, list "
        "or dict of tensors): return the model's output from forward"
        + ("" if has_loss else ", or pass loss_fn= to turn it into a loss")
    )


def _loss_of_output(loss_fn: Callable | str, targets: Any) -> Callable[[Any], Any]:
    # Imported here: endtoend.train imports the training loop, which imports the audit.
    from endtoend.train.evaluate import LOSSES, resolve_loss

    if not (callable(loss_fn) or isinstance(loss_fn, str)):
        raise UsageError(
            f"audit: loss_fn must be a function loss_fn(output, targets) or a loss name "
            f"({', '.join(LOSSES)}), got {type(loss_fn).__name__}"
        )
    try:
        loss_fn = resolve_loss(loss_fn)  # a name, as fit accepts it
    except UsageError as error:
        raise UsageError(f"audit: {error}") from None
    if targets is not None:
        return lambda output: loss_fn(output, targets)
    if _needs_targets(loss_fn):
        raise UsageError(
            f"audit: loss_fn {getattr(loss_fn, '__name__', type(loss_fn).__name__)} needs targets; pass "
            "targets= (the targets of the same batch as the inputs)"
        )
    if _takes_one_argument(loss_fn):
        return loss_fn  # an objective of the output alone
    # The user's own two-argument loss gets targets=None, as it always has: one that ignores
    # them works, and one that needs them raises its own error.
    return lambda output: loss_fn(output, None)


def _takes_one_argument(fn: Callable) -> bool:
    try:
        signature = inspect.signature(fn.forward if isinstance(fn, nn.Module) else fn)
    except (TypeError, ValueError):
        return True  # a builtin without a signature (torch.sum): one argument is the safe call
    try:
        signature.bind(None)
    except TypeError:
        return False
    return True


def _needs_targets(fn: Callable) -> bool:
    """torch's own losses (F.cross_entropy, nn.MSELoss(), ...): they cannot run without targets."""
    owner = type(fn) if isinstance(fn, nn.Module) else fn
    return (getattr(owner, "__module__", None) or "").startswith("torch.nn.") and not _takes_one_argument(fn)
