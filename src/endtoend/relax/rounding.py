"""Rounding and binarisation: replacements for `round`, `floor`, `sign`, integer casts and `x > t`.

`torch.round` and friends are piecewise constant, so their gradient is zero almost
everywhere: autograd does not fail, the parameters upstream simply stop learning.
"""

from __future__ import annotations

import math

import torch

from endtoend.errors import UsageError
from endtoend.relax import _checks
from endtoend.relax._straight_through import straight_through


def straight_through_round(x: torch.Tensor) -> torch.Tensor:
    """torch.round(x) in the forward pass, the identity's gradient in the backward pass.

    Math: forward y = round(x) (half to even, like torch.round); backward dy/dx := 1.
    Source: the straight-through estimator, Bengio, Léonard & Courville 2013.
    Shapes: x (...) -> same shape and dtype; equal to torch.round(x) bit for bit.

    Example:
        >>> import torch
        >>> from endtoend.relax import straight_through_round
        >>> x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
        >>> y = straight_through_round(x)
        >>> y.tolist()
        [0.0, 2.0, -2.0]
        >>> y.sum().backward()
        >>> x.grad.tolist()
        [1.0, 1.0, 1.0]
    """
    _checks.tensors("straight_through_round", x=x)
    return straight_through(torch.round(x), x)


def straight_through_sign(x: torch.Tensor) -> torch.Tensor:
    """torch.sign(x) in the forward pass, a gradient of 1 where |x| <= 1 (0 elsewhere) backward.

    Math: forward y = sign(x); backward dy/dx := 1 if |x| <= 1 else 0 (the saturating
    straight-through estimator, which stops pushing on weights that are already far out).
    Source: Hubara, Courbariaux et al. 2016, Binarized Neural Networks, section 1.3.
    Shapes: x (...) -> same shape; values in {-1, 0, 1} exactly as torch.sign.

    Example:
        >>> import torch
        >>> from endtoend.relax import straight_through_sign
        >>> x = torch.tensor([-0.3, 0.7, 2.0], requires_grad=True)
        >>> y = straight_through_sign(x)
        >>> y.sum().backward()
        >>> y.tolist(), x.grad.tolist()
        ([-1.0, 1.0, 1.0], [1.0, 1.0, 0.0])
    """
    # An explicit mask, not clamp's gradient: that one's value at |x| = 1 is not promised.
    _checks.tensors("straight_through_sign", x=x)
    inside = x.abs() <= 1
    return straight_through(torch.sign(x), torch.where(inside, x, x.detach().clamp(-1.0, 1.0)))


def quantize(x: torch.Tensor, bits: int, low: float, high: float) -> torch.Tensor:
    """Uniform quantisation to 2**bits levels on [low, high], with a straight-through gradient.

    Math: step = (high - low) / (2**bits - 1); y = low + step * round((clamp(x, low, high) - low) / step);
    backward dy/dx := 1 inside [low, high] (ends included), 0 outside (values clipped to the
    range get no push).
    Source: "fake quantisation" of Jacob et al. 2018 (quantisation-aware training), with the
    straight-through estimator of Bengio et al. 2013.
    Shapes: x (...) -> same shape and dtype.

    Example:
        >>> import torch
        >>> from endtoend.relax import quantize
        >>> x = torch.tensor([-0.2, 0.1, 0.4, 0.9, 1.5], requires_grad=True)
        >>> y = quantize(x, bits=2, low=0.0, high=0.9)
        >>> y.sum().backward()
        >>> [round(v, 4) for v in y.tolist()], x.grad.tolist()
        ([0.0, 0.0, 0.3, 0.9, 0.9], [0.0, 1.0, 1.0, 1.0, 0.0])
    """
    _checks.tensors("quantize", x=x)
    _checks.integer("quantize", "bits", bits, low=1)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise UsageError(f"quantize: need finite low < high for the quantisation range, got low={low}, high={high}")
    step = (high - low) / (2**bits - 1)
    clipped = x.detach().clamp(low, high)
    levels = torch.round((clipped - low) / step) * step + low
    # The pass-through mask is explicit rather than clamp's gradient, whose value at the
    # boundary itself is an implementation detail that has changed between torch releases.
    inside = (x >= low) & (x <= high)
    return straight_through(levels, torch.where(inside, x, clipped))


def soft_threshold(
    x: torch.Tensor,
    threshold: float | torch.Tensor,
    sharpness: float = 10.0,
    hard: bool = False,
) -> torch.Tensor:
    """A sigmoid gate in place of the step `(x > threshold).float()`.

    Math: y = sigmoid(sharpness * (x - threshold)); tends to the step as sharpness grows.
    Source: logistic smoothing of the Heaviside step, the same relaxation that underlies
    the binary Concrete distribution (Maddison, Mnih & Teh 2017). Not the L1 "soft
    thresholding" (shrinkage) operator of signal processing.
    Shapes: x (...) and threshold broadcastable -> the broadcast shape.
    Use: `hard=True` gives exactly (x > threshold) forward with the sigmoid's gradient.
    Gradient flows to `x` and, when it is a tensor, to `threshold` (a learnable cut-off).

    Example:
        >>> import torch
        >>> from endtoend.relax import soft_threshold
        >>> x = torch.tensor([-1.0, 0.0, 1.0])
        >>> soft_threshold(x, 0.0, sharpness=50.0).round(decimals=3)
        tensor([0.0000, 0.5000, 1.0000])
        >>> soft_threshold(x, 0.0, hard=True)
        tensor([0., 0., 1.])
    """
    _checks.tensors("soft_threshold", x=x)
    _checks.positive("soft_threshold", "sharpness", sharpness,
                     "; a negative sharpness would flip the gate, use (threshold - x) for x < threshold")
    soft = torch.sigmoid(sharpness * (x - threshold))
    if not hard:
        return soft
    return straight_through((x > threshold).to(soft.dtype), soft)
