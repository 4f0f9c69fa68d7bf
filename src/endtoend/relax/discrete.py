"""Discrete choice: replacements for `argmax`, `one_hot`, `multinomial` and `bernoulli`.

An index is an integer and integers carry no gradient, so `logits.argmax()` starves
everything upstream. These functions keep a one-hot (or an expected index) in floating
point, with a gradient defined by a softmax or a sigmoid.
"""

from __future__ import annotations

import math

import torch

from endtoend.errors import UsageError
from endtoend.relax import _checks
from endtoend.relax._straight_through import straight_through


def _uniform_open(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform noise in (0, 1): the lower end is lifted to `tiny` so that log(u) stays finite."""
    u = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    return u.clamp_min(torch.finfo(like.dtype).tiny)


def _one_hot_argmax(values: torch.Tensor, dim: int) -> torch.Tensor:
    index = values.argmax(dim=dim, keepdim=True)
    return torch.zeros_like(values).scatter(dim, index, 1.0)


def gumbel_softmax(
    logits: torch.Tensor,
    tau: float = 1.0,
    hard: bool = False,
    dim: int = -1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A differentiable sample from Categorical(softmax(logits)).

    Math: y = softmax((logits + g) / tau), g = -log(-log u), u ~ U(0, 1); with `hard=True`
    the forward is one_hot(argmax(y)) and the gradient is that of y (straight-through).
    Source: Jang, Gu & Poole 2017 (Gumbel-Softmax); Maddison, Mnih & Teh 2017 (Concrete).
    Shapes: logits (..., n, ...) -> same shape; rows along `dim` sum to 1.
    Use: in place of `torch.multinomial` or `argmax` of sampled logits. Pass a `generator`
    on the logits' device for reproducible noise; lower `tau` (see `anneal_temperature`)
    for samples closer to one-hot.

    Example:
        >>> import torch
        >>> from endtoend.relax import gumbel_softmax
        >>> logits = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
        >>> y = gumbel_softmax(logits, tau=0.5, hard=True, generator=torch.Generator().manual_seed(0))
        >>> y.sum().item(), sorted(y.flatten().tolist())
        (1.0, [0.0, 0.0, 1.0])
        >>> (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        >>> bool(logits.grad.abs().sum() > 0)
        True
    """
    _checks.tensors("gumbel_softmax", logits=logits)
    _checks.positive("gumbel_softmax", "tau", tau, "; a small tau (0.1 to 1) gives near one-hot samples")
    gumbels = -torch.log(-torch.log(_uniform_open(logits, generator)))
    soft = torch.softmax((logits + gumbels) / tau, dim=dim)
    if not hard:
        return soft
    return straight_through(_one_hot_argmax(soft, dim), soft)


def anneal_temperature(step: int, total_steps: int, tau0: float = 1.0, tau_min: float = 0.1) -> float:
    """Temperature for Gumbel-Softmax at `step`: exponential decay from `tau0` to `tau_min`.

    Math: tau(step) = tau0 * (tau_min / tau0) ** min(step / total_steps, 1), i.e.
    tau0 * exp(-r * step) with r chosen to reach tau_min at `total_steps`, then held.
    Source: the exponential schedule of Jang, Gu & Poole 2017, section 3.
    Shapes: plain floats in and out.

    Example:
        >>> from endtoend.relax import anneal_temperature
        >>> [round(anneal_temperature(s, 100, tau0=1.0, tau_min=0.25), 3) for s in (0, 50, 100, 500)]
        [1.0, 0.5, 0.25, 0.25]
    """
    _checks.positive("anneal_temperature", "total_steps", total_steps)
    _checks.positive("anneal_temperature", "tau_min", tau_min)
    _checks.positive("anneal_temperature", "tau0", tau0)
    if not tau_min <= tau0:
        raise UsageError(f"anneal_temperature: need 0 < tau_min <= tau0, got tau_min={tau_min}, tau0={tau0}")
    progress = min(max(step, 0) / total_steps, 1.0)
    return tau0 * math.exp(progress * math.log(tau_min / tau0))


def straight_through_argmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """one_hot(argmax(logits)) in the forward pass, the gradient of softmax(logits) backward.

    Math: forward y = onehot(argmax_i logits_i); backward dy/dlogits := d softmax(logits).
    Source: the straight-through estimator of Bengio, Léonard & Courville 2013, in the
    softmax form used by Jang, Gu & Poole 2017 ("ST Gumbel" without the noise).
    Shapes: logits (..., n, ...) -> same shape, exactly one 1.0 along `dim`.

    Example:
        >>> import torch
        >>> from endtoend.relax import straight_through_argmax
        >>> logits = torch.tensor([[0.1, 3.0, -1.0]], requires_grad=True)
        >>> y = straight_through_argmax(logits)
        >>> y
        tensor([[0., 1., 0.]], grad_fn=<AddBackward0>)
        >>> (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        >>> bool(logits.grad.abs().sum() > 0)
        True
    """
    _checks.tensors("straight_through_argmax", logits=logits)
    soft = torch.softmax(logits, dim=dim)
    return straight_through(_one_hot_argmax(logits, dim), soft)


def soft_argmax(x: torch.Tensor, dim: int = -1, beta: float = 1.0) -> torch.Tensor:
    """The expected index under softmax(beta * x): a differentiable, fractional argmax.

    Math: soft_argmax(x) = sum_i i * softmax(beta * x)_i; tends to argmax(x) as beta grows.
    Source: the "soft argmin" of Kendall et al. 2017 (GC-Net, end-to-end stereo regression).
    Shapes: x (..., n, ...) -> x with `dim` removed, floating point.

    Example:
        >>> import torch
        >>> from endtoend.relax import soft_argmax
        >>> x = torch.tensor([[0.0, 5.0, 0.0, 0.0]])
        >>> soft_argmax(x, beta=10.0).round(decimals=3)
        tensor([1.])
    """
    _checks.tensors("soft_argmax", x=x)
    _checks.non_negative("soft_argmax", "beta", beta, "; for a soft argmin pass -x")
    n = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = n
    positions = torch.arange(n, dtype=x.dtype, device=x.device).reshape(shape)
    return (torch.softmax(beta * x, dim=dim) * positions).sum(dim=dim)


def relaxed_bernoulli(
    logits: torch.Tensor,
    tau: float,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A differentiable sample from Bernoulli(sigmoid(logits)), in (0, 1) or exactly {0, 1}.

    Math: y = sigmoid((logits + log u - log(1 - u)) / tau), u ~ U(0, 1); with `hard=True`
    the forward is (y > 0.5) and the gradient is that of y (straight-through).
    Source: the binary Concrete distribution, Maddison, Mnih & Teh 2017, section 3.3.
    Shapes: logits (...) -> same shape.
    Use: in place of `torch.bernoulli(torch.sigmoid(logits))`.

    Example:
        >>> import torch
        >>> from endtoend.relax import relaxed_bernoulli
        >>> logits = torch.zeros(1000, requires_grad=True)
        >>> y = relaxed_bernoulli(logits, tau=0.5, hard=True, generator=torch.Generator().manual_seed(0))
        >>> set(y.tolist()) == {0.0, 1.0}, abs(y.mean().item() - 0.5) < 0.05
        (True, True)
    """
    _checks.tensors("relaxed_bernoulli", logits=logits)
    _checks.positive("relaxed_bernoulli", "tau", tau, "; a small tau (0.1 to 1) gives samples near 0 and 1")
    u = _uniform_open(logits, generator)
    logistic_noise = torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid((logits + logistic_noise) / tau)
    if not hard:
        return soft
    return straight_through((soft > 0.5).to(soft.dtype), soft)
