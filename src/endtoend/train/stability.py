"""Stable gradient flow: clipping, per-layer norms, non-finite checks, init and a weight EMA.

Each piece is a small function (or one small class) that the training loop calls
explicitly; nothing here hooks into the model. Everything that returns a Python
number reads the device exactly once, so the loop decides when to pay for that sync
(for example only on logging steps).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from endtoend.errors import UsageError

_WEIGHTED_LAYERS = (
    nn.Linear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
_NORM_LAYERS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.GroupNorm, nn.LayerNorm, nn.RMSNorm,
)
_INIT_SCHEMES = {
    # fan_in with the ReLU gain keeps the forward activation variance constant (He et al. 2015).
    "kaiming": lambda weight: nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu"),
    "xavier": nn.init.xavier_uniform_,
    "orthogonal": nn.init.orthogonal_,  # gain 1: every row orthonormal, W W^T = I for wide layers
}


def _global_norm(tensors: list[Tensor]) -> Tensor:
    """L2 norm of all tensors seen as one vector, computed like torch's clip_grad_norm_ (no sync)."""
    norms = torch._foreach_norm(tensors)  # one fused kernel per device instead of one per tensor
    return torch.linalg.vector_norm(torch.stack([n.to(tensors[0].device) for n in norms]))


def _scale_(tensors: list[Tensor], factor: Tensor) -> None:
    for device in {t.device for t in tensors}:
        torch._foreach_mul_([t for t in tensors if t.device == device], factor.to(device))


def _adaptive_clip_(parameter: Tensor, threshold: float, eps: float) -> None:
    """AGC on one parameter: cap ||G_unit|| / max(||W_unit||, eps) at `threshold`."""
    gradient = parameter.grad
    # A unit is one output row (Linear) or output channel (Conv); biases and gains are one unit.
    dims = tuple(range(1, gradient.ndim)) if gradient.ndim > 1 else None
    weight_norm = torch.linalg.vector_norm(parameter.detach(), dim=dims, keepdim=True)
    gradient_norm = torch.linalg.vector_norm(gradient, dim=dims, keepdim=True)
    largest_allowed = threshold * weight_norm.clamp_min(eps)
    # clamp_max(1) leaves units under the threshold multiplied by exactly 1.0, i.e. untouched.
    gradient.mul_((largest_allowed / gradient_norm.clamp_min(1e-6)).clamp_max(1.0))


def clip_gradients(
    parameters: Iterable[Tensor],
    *,
    max_norm: float | None = None,
    max_value: float | None = None,
    agc: float | None = None,
    eps: float = 1e-3,
) -> float:
    """Clip gradients in place and return the global L2 gradient norm measured *before* clipping.

    Any combination of three clips, applied in this order:
      - `agc`: adaptive gradient clipping (Brock et al. 2021, NFNets). For each unit (an output
        row of a weight with ndim > 1, the whole tensor for biases and gains) the ratio
        ||G|| / max(||W||, eps) is capped at `agc` by rescaling that unit's gradient.
        The paper leaves the final classifier layer out: pass a parameter subset to do so.
      - `max_value`: every gradient element is clamped into [-max_value, max_value].
      - `max_norm`: all gradients are rescaled together so that their global norm (measured
        after the two clips above) is at most `max_norm`, exactly as clip_grad_norm_ does.
    Parameters whose `.grad` is None are skipped. With no clip given it only measures.

    Returns the pre-clip norm as a float (the same value clip_grad_norm_ returns); reading it
    syncs with the device once. A NaN/Inf result means some gradient is non-finite.
    """
    for name, value in (("max_norm", max_norm), ("max_value", max_value), ("agc", agc)):
        if value is not None and not value > 0:
            raise UsageError(f"clip_gradients: {name} must be > 0, got {value!r}; pass None to disable it")
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return 0.0
    gradients = [p.grad for p in with_grad]
    with torch.no_grad():
        pre_clip_norm = _global_norm(gradients)
        if agc is not None:
            for parameter in with_grad:
                _adaptive_clip_(parameter, agc, eps)
        if max_value is not None:
            for gradient in gradients:
                gradient.clamp_(-max_value, max_value)
        if max_norm is not None:
            changed = agc is not None or max_value is not None
            norm = _global_norm(gradients) if changed else pre_clip_norm
            _scale_(gradients, (max_norm / (norm + 1e-6)).clamp_max(1.0))
    return pre_clip_norm.item()


def _norms_by_name(named: list[tuple[str, Tensor]]) -> dict[str, float]:
    if not named:
        return {}
    names = [name for name, _ in named]
    if _is_dtensor(named[0][1]):  # fit(shard=True): every rank holds a shard; sum the squares over ranks
        squares = torch.stack(torch._foreach_norm([tensor.to_local() for _, tensor in named])) ** 2
        torch.distributed.all_reduce(squares)
        return dict(zip(names, squares.sqrt().tolist()))
    norms = torch._foreach_norm([tensor for _, tensor in named])
    device = norms[0].device
    return dict(zip(names, torch.stack([n.to(device) for n in norms]).tolist()))  # the one sync


def _is_dtensor(tensor: Tensor) -> bool:
    """A shard of fit(shard=True)'s parameters; no import cost when nothing is sharded."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def gradient_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each parameter's gradient, keyed by qualified name, for the per-layer monitor.

    Parameters without a gradient are left out. One device sync for the whole model.
    """
    return _norms_by_name([(n, p.grad) for n, p in model.named_parameters() if p.grad is not None])


def weight_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of each parameter, keyed by qualified name. One device sync for the whole model."""
    return _norms_by_name([(n, p.detach()) for n, p in model.named_parameters()])


def all_finite(loss: Tensor, parameters: Iterable[Tensor]) -> bool:
    """True when the loss and every existing gradient hold no NaN/Inf; one device sync.

    The loop calls it after backward and skips the optimizer step (or rolls back) on False.
    isfinite is used rather than a norm because a norm of finite float16 values can overflow.
    """
    gradients = [p.grad for p in parameters if p.grad is not None]
    if gradients and _is_dtensor(gradients[0]):  # sharded: check this rank's shards; the loop reduces the flag
        gradients = [gradient.to_local() for gradient in gradients]
    return not _any_non_finite([loss.detach().reshape(1), *gradients])


def _any_non_finite(tensors: list[Tensor]) -> bool:
    """True when a tensor holds NaN/Inf. GradScaler's fused check, ~8x faster than isfinite
    per tensor on CPU: one kernel per device and dtype, then one sync. It multiplies every
    tensor in place by exactly 1.0, which leaves each bit-identical."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    try:
        flags = []
        for (device, _), group in groups.items():
            flags.append(torch.zeros(1, device=device))
            torch._amp_foreach_non_finite_check_and_unscale_(group, flags[-1], _one(device))
        found = flags[0] if len(flags) == 1 else sum(flag.to(flags[0].device) for flag in flags)
    except (RuntimeError, NotImplementedError):  # sparse, complex or exotic tensors: the plain way
        found = _finite_each(tensors).logical_not()
    return bool(found.any().item())


def _finite_each(tensors: list[Tensor]) -> Tensor:
    """(len(tensors),) bool on the first tensor's device: whether each holds no NaN/Inf."""
    return torch.stack([torch.isfinite(t).all().to(tensors[0].device) for t in tensors])


_ONES: dict[torch.device, Tensor] = {}


def _one(device: torch.device) -> Tensor:
    """A cached tensor holding 1.0 on `device` (allocating it every step shows up in profiles)."""
    if device not in _ONES:
        _ONES[device] = torch.ones(1, device=device)
    return _ONES[device]


def _named_tensors(state: object, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    if isinstance(state, Tensor):
        yield prefix, state
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            yield from _named_tensors(value, f"{prefix}.{index}" if prefix else str(index))


def first_non_finite(state_dict: Mapping[str, object]) -> str | None:
    """Name of the first tensor holding NaN/Inf, or None when every tensor is finite.

    Used to refuse writing a non-finite checkpoint. Note the polarity: the result is truthy
    on *failure*, so test `is not None`. Nested dicts/lists (an optimizer's state_dict) are
    walked and named with dots ("state.0.exp_avg"); integer tensors and non-tensors are
    skipped. One device sync when all are finite (a second names the bad one).
    """
    named = [(n, t) for n, t in _named_tensors(state_dict) if t.is_floating_point() or t.is_complex()]
    if not named:
        return None
    if not _any_non_finite([t for _, t in named]):  # the usual answer, in one fused check
        return None
    finite = _finite_each([t for _, t in named]).tolist()  # which one, to name it
    return next((name for (name, _), ok in zip(named, finite) if not ok), None)


def _residual_last_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layer that closes each residual branch, as (qualified name, layer)."""
    found = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if hasattr(module, "residual_last"):  # an explicit marker wins over the heuristic
            marker = module.residual_last
            if marker is None:  # lets a look-alike block opt out of the heuristic below
                continue
            try:
                found.append((prefix + marker, module.get_submodule(marker)))
            except (AttributeError, TypeError):
                raise UsageError(
                    f"{type(module).__name__}.residual_last = {marker!r} does not name a submodule of it; "
                    "set it to the attribute name of the branch's last layer, e.g. 'bn2'"
                ) from None
            continue
        norm_name = "bn3" if hasattr(module, "bn3") else "bn2"
        kind = type(module).__name__
        looks_residual = hasattr(module, "downsample") or "Block" in kind or "Bottleneck" in kind
        if looks_residual and isinstance(getattr(module, norm_name, None), _NORM_LAYERS):
            found.append((prefix + norm_name, getattr(module, norm_name)))
    return found


def init_weights(model: nn.Module, scheme: str = "kaiming", zero_init_residual: bool = True) -> nn.Module:
    """Initialise `model` in place and return it.

    - Linear / Conv / ConvTranspose weights: `scheme` is "kaiming" (normal, fan_in, ReLU gain:
      std = sqrt(2 / fan_in)), "xavier" (uniform, Glorot) or "orthogonal" (gain 1). Biases 0.
    - Norm layers (BatchNorm, SyncBatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm):
      weight 1, bias 0. Every other module keeps its own initialisation.
    - `zero_init_residual`: the last layer of each residual branch gets weight 0, so every
      block starts as the identity and the network trains like a shallower one at first
      (Goyal et al. 2017). A residual branch is detected in exactly two ways:
        1. a module with an attribute `residual_last` naming its last layer ("bn2",
           "branch.2"); that layer's `weight` is zeroed (a norm, conv or linear layer);
           `residual_last = None` opts a module out of rule 2;
        2. torchvision-style blocks: a module with a norm layer `bn3` (else `bn2`) and either
           a `downsample` attribute or a class name containing "Block" or "Bottleneck";
           `bn3` / `bn2` weight is zeroed.
      A "Block" without a skip connection that matches rule 2 would be zeroed dead: mark it
      with `residual_last = None`.
    """
    if scheme not in _INIT_SCHEMES:
        raise UsageError(f"unknown init scheme {scheme!r}; expected one of {', '.join(_INIT_SCHEMES)}")
    initialise = _INIT_SCHEMES[scheme]
    with torch.no_grad():
        for module in model.modules():
            is_weighted = isinstance(module, _WEIGHTED_LAYERS)
            if not (is_weighted or isinstance(module, _NORM_LAYERS)):
                continue
            if is_weighted:
                initialise(module.weight)
            elif getattr(module, "weight", None) is not None:  # None for norms with affine=False
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        # After the pass above, so the norm layers' weight 1 does not undo the zeroing.
        for name, layer in _residual_last_layers(model) if zero_init_residual else []:
            if not isinstance(getattr(layer, "weight", None), Tensor):
                raise UsageError(f"residual branch end {name!r} has no weight to zero; name a norm, conv or linear layer")
            layer.weight.zero_()
    return model


class WeightEMA:
    """Exponential moving average of a model's weights, to evaluate a smoother model.

    Parameters are averaged, ema = decay * ema + (1 - decay) * current; buffers (BatchNorm
    running statistics, counters) are copied as they are. With `warmup` the decay used at
    update n is min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the
    random initial weights. The loop calls `update(model)` after each optimizer step and
    evaluates inside `with ema.swapped(model):`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise UsageError(f"WeightEMA decay must be in [0, 1], got {decay!r}; 0.999 is a common choice")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def current_decay(self) -> float:
        """The decay the next `update` will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(ema params, model params, ema buffers, model buffers), matched by name."""
        model_params = {n: p.detach() for n, p in model.named_parameters()}
        model_buffers = dict(model.named_buffers())
        if model_params.keys() != self.params.keys() or model_buffers.keys() != self.buffers.keys():
            raise UsageError("WeightEMA was built for a model with other parameter/buffer names; build a new WeightEMA(model)")
        return (list(self.params.values()), [model_params[n] for n in self.params],
                list(self.buffers.values()), [model_buffers[n] for n in self.buffers])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (no device sync)."""
        ema_params, params, ema_buffers, buffers = self._pairs(model)
        if ema_params:
            # lerp(ema, current, 1 - d) = d * ema + (1 - d) * current, one fused kernel per device.
            torch._foreach_lerp_(ema_params, params, 1.0 - self.current_decay())
        for ema_buffer, buffer in zip(ema_buffers, buffers):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters and buffers with the averaged ones."""
        ema_params, params, ema_buffers, buffers = self._pairs(model)
        for source, target in zip(ema_params + ema_buffers, params + buffers):
            target.copy_(source)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Evaluate with the EMA weights; the original weights come back bit-exactly on exit."""
        originals = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                    tensor.copy_(originals[name])

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors only (safetensors-ready): "params.<name>", "buffers.<name>", "num_updates".

        The tensors are the live averages, not copies, like nn.Module.state_dict.
        """
        state = {"num_updates": torch.tensor(self.num_updates, dtype=torch.int64)}
        state.update({f"params.{n}": t for n, t in self.params.items()})
        state.update({f"buffers.{n}": t for n, t in self.buffers.items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore what `state_dict` returned; tensors are copied onto the averages' devices."""
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise UsageError(f"EMA state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for kind, averages in (("params", self.params), ("buffers", self.buffers)):
            for name, tensor in averages.items():
                tensor.copy_(state[f"{kind}.{name}"])
        self.num_updates = int(state["num_updates"])
