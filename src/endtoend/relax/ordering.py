"""Ordering: replacements for the indices of `sort`, `argsort` and `topk`.

The *values* of `torch.sort` carry a gradient, but ranks, permutations and top-k masks
are integers (or built from them), so a loss on "which items came first" starves the
scorer. Sorting and ranking here follow Blondel et al. 2020: both are projections onto
the permutahedron, solved exactly by isotonic regression (pool adjacent violators).
Top-k follows the Limited Multi-Label projection (Amos et al. 2019). All functions
work on the last dim and on any leading batch dims.
"""

from __future__ import annotations

import math

import torch

from endtoend.errors import UsageError
from endtoend.relax import _checks

# Bisection halves the threshold's bracket each step; 64 steps exhaust float64 precision.
_BISECTION_STEPS = 64


def _block_means(values: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Each element replaced by the mean of its block; rows of `block` are 0, 0, 1, 2, 2, ..."""
    sums = torch.zeros_like(values).scatter_add(1, block, values)
    counts = torch.zeros_like(values).scatter_add(1, block, torch.ones_like(values))
    return (sums / counts.clamp_min(1)).gather(1, block)


def _pool_adjacent_violators(y: torch.Tensor) -> torch.Tensor:
    """Row-wise blocks of argmin_v ||v - y||^2 subject to v_1 >= v_2 >= ... >= v_n, for y (B, n).

    Returns block ids (B, n), rows like 0, 0, 1, 2, 2, ...; the solution is the block means
    of y. Pool adjacent violators, run in parallel: every pair of neighbouring blocks whose
    means rise is merged in the same step. That is safe because each violating pair lies in
    one block of the solution, whatever order they are pooled in (Best & Chakravarti 1990).
    """
    batch, n = y.shape
    with torch.no_grad():
        block = torch.arange(n, device=y.device).expand(batch, n).contiguous()
        while True:
            means = _block_means(y, block)
            boundary = block[:, 1:] != block[:, :-1]
            rises = boundary & (means[:, 1:] > means[:, :-1])
            if not bool(rises.any()):
                return block
            starts = torch.ones_like(block, dtype=torch.bool)
            starts[:, 1:] = boundary & ~rises
            block = starts.long().cumsum(dim=1) - 1


def _isotonic_decreasing(y: torch.Tensor) -> torch.Tensor:
    """Row-wise argmin_v ||v - y||^2 subject to v_1 >= v_2 >= ... >= v_n, for y (B, n).

    The partition is found without gradient; the solution is then the block means of `y`,
    whose Jacobian (block averaging) is exactly the isotonic regression's.
    """
    return _block_means(y, _pool_adjacent_violators(y))


def _project_onto_permutahedron(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of z onto the convex hull of the permutations of
    the matching row of w (w sorted descending); Blondel et al. 2020, proposition 3."""
    sorted_z, order = z.sort(dim=1, descending=True)
    block = _pool_adjacent_violators(sorted_z - w)
    # The projection is sorted_z - block_mean(sorted_z - w), but that form cancels: at large
    # strength sorted_z is large and w small, so sorted_z - w rounds w to a multiple of
    # ulp(sorted_z) (16 values of order 1 at strength 1e4 came out 8e-3 off in float32).
    # The same value as (sorted_z - block_mean(sorted_z)) + block_mean(w) never adds w to a
    # large number: for a block of one it is w exactly. Offsets from each block's first entry
    # keep the large common part out of block_mean(sorted_z) as well.
    position = torch.arange(z.shape[1], device=z.device).expand_as(block)
    is_start = torch.ones_like(block, dtype=torch.bool)
    is_start[:, 1:] = block[:, 1:] != block[:, :-1]
    first = torch.where(is_start, position, torch.zeros_like(position)).cummax(dim=1).values
    offsets = sorted_z - sorted_z.gather(1, first)
    primal = (offsets - _block_means(offsets, block)) + _block_means(w, block)
    return torch.zeros_like(primal).scatter(1, order, primal)


def _rows(x: torch.Tensor, function: str) -> torch.Tensor:
    if x.dim() == 0:
        raise UsageError(f"{function}: expected a tensor of shape (..., n), got a 0-d tensor; use x[None]")
    return x.reshape(-1, x.shape[-1])


def soft_sort(x: torch.Tensor, strength: float = 1.0, descending: bool = False) -> torch.Tensor:
    """Sorted values of x along the last dim, as a smooth function of x.

    Math: soft_sort(x) = P(strength * rho, x), the projection of strength * (n, ..., 1) onto
    the permutahedron of x. strength -> inf gives torch.sort(x).values exactly (bit for bit,
    in float32 too, once strength exceeds the largest gap between neighbouring sorted
    values); strength -> 0 gives mean(x).
    Source: Blondel, Teboul, Berthet & Djolonga 2020, Fast Differentiable Sorting and
    Ranking (quadratic regularisation; their epsilon is 1 / strength).
    Shapes: x (..., n) -> (..., n).

    Example:
        >>> import torch
        >>> from endtoend.relax import soft_sort
        >>> x = torch.tensor([[3.0, 1.0, 2.0]], requires_grad=True)
        >>> soft_sort(x, strength=10.0)
        tensor([[1., 2., 3.]], grad_fn=<ViewBackward0>)
        >>> soft_sort(x, strength=0.5)
        tensor([[1.5000, 2.0000, 2.5000]], grad_fn=<ViewBackward0>)
    """
    _checks.tensors("soft_sort", x=x)
    _checks.positive("soft_sort", "strength", strength, "; larger is closer to torch.sort")
    sign = 1.0 if descending else -1.0
    theta = sign * _rows(x, "soft_sort")
    n = theta.shape[1]
    w = theta.sort(dim=1, descending=True).values
    rho = torch.arange(n, 0, -1, dtype=x.dtype, device=x.device).expand_as(theta)
    return (sign * _project_onto_permutahedron(strength * rho, w)).view(x.shape)


def soft_rank(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Ranks of x along the last dim (1 = smallest), as a smooth function of x.

    Math: soft_rank(x) = P(strength * x, rho), the projection of strength * x onto the
    permutahedron of rho = (n, ..., 1). Large strength gives the hard ranks exactly once
    strength * (smallest gap between distinct values) exceeds 1 (ties share their average
    rank, as scipy.stats.rankdata); strength -> 0 gives (n + 1) / 2 for all.
    Source: Blondel, Teboul, Berthet & Djolonga 2020, Fast Differentiable Sorting and
    Ranking (quadratic regularisation; their epsilon is 1 / strength).
    Shapes: x (..., n) -> (..., n).

    Example:
        >>> import torch
        >>> from endtoend.relax import soft_rank
        >>> x = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
        >>> soft_rank(x, strength=10.0)
        tensor([[2., 1., 3.]], grad_fn=<ViewBackward0>)
    """
    _checks.tensors("soft_rank", x=x)
    _checks.positive("soft_rank", "strength", strength, "; larger is closer to the hard ranks")
    z = strength * _rows(x, "soft_rank")
    n = z.shape[1]
    rho = torch.arange(n, 0, -1, dtype=x.dtype, device=x.device).expand_as(z)
    return _project_onto_permutahedron(z, rho).view(x.shape)


def soft_topk(x: torch.Tensor, k: int, tau: float = 1.0) -> torch.Tensor:
    """A soft top-k mask along the last dim: entries in (0, 1), each row summing to k.

    Math: mask_i = sigmoid((x_i - t) / tau), with the per-row threshold t found by bisection
    so that sum_i mask_i = k; the gradient includes dt/dx_i = sigmoid'_i / sum_j sigmoid'_j
    (implicit function theorem), so it keeps row sums at k. tau -> 0 gives the hard mask.
    Source: Amos, Koltun & Kolter 2019, The Limited Multi-Label Projection Layer (the
    entropy-regularised projection onto {m in [0, 1]^n : sum m = k}).
    Shapes: x (..., n) -> (..., n); requires 0 < k < n.

    Example:
        >>> import torch
        >>> from endtoend.relax import soft_topk
        >>> x = torch.tensor([[0.1, 3.0, -2.0, 2.0]], requires_grad=True)
        >>> mask = soft_topk(x, k=2, tau=0.01)
        >>> mask.round(decimals=3).tolist(), round(mask.sum().item(), 4)
        ([[0.0, 1.0, 0.0, 1.0]], 2.0)
    """
    _checks.tensors("soft_topk", x=x)
    n = _rows(x, "soft_topk").shape[-1]
    if n < 2:
        raise UsageError(f"soft_topk: the last dim must hold n >= 2 entries to choose from, "
                         f"got shape {tuple(x.shape)}")
    _checks.integer("soft_topk", "k", k, low=1, high=n - 1,
                    hint=f" (need 0 < k < n = {n}, the size of the last dim)")
    _checks.positive("soft_topk", "tau", tau, "; a small tau (0.01 to 1) gives a near-hard mask")
    # At t = min(x) - tau * margin every entry is >= sigmoid(margin) >= k / n, so the sum is
    # >= k; symmetrically the sum is <= k at max(x) + tau * margin. The root lies between.
    margin = math.log(n) + 2.0
    with torch.no_grad():
        low = x.amin(dim=-1, keepdim=True) - tau * margin
        high = x.amax(dim=-1, keepdim=True) + tau * margin
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            too_low = torch.sigmoid((x - middle) / tau).sum(dim=-1, keepdim=True) > k
            low = torch.where(too_low, middle, low)
            high = torch.where(too_low, high, middle)
        threshold = (low + high) / 2
        mask = torch.sigmoid((x - threshold) / tau)
        slope = mask * (1 - mask)
        dthreshold_dx = slope / slope.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    # Same value as `threshold`, but with the implicit gradient dt/dx attached.
    threshold = threshold + (dthreshold_dx * (x - x.detach())).sum(dim=-1, keepdim=True)
    return torch.sigmoid((x - threshold) / tau)
