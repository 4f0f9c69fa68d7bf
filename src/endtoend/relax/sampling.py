"""Sampling: replacements for `torch.normal(mu, std)` and sampling without `rsample`.

`torch.normal(mean, std)` returns a sample whose gradient with respect to `mean` and
`std` is zero: the encoder of a VAE written that way never learns. Move the randomness
into a parameter-free noise tensor instead, and the sample is a differentiable function
of the parameters.
"""

from __future__ import annotations

import torch

from endtoend.errors import UsageError
from endtoend.relax import _checks


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A differentiable sample from N(mu, exp(logvar)).

    Math: z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (the reparameterisation trick).
    Source: Kingma & Welling 2014, Auto-Encoding Variational Bayes, section 2.4.
    Shapes: mu and logvar (...) of the same shape -> z of that shape. Pass a `generator`
    on mu's device for reproducible noise.

    Example:
        >>> import torch
        >>> from endtoend.relax import reparameterize
        >>> mu = torch.full((20000,), 3.0, requires_grad=True)
        >>> logvar = torch.full((20000,), 0.0, requires_grad=True)
        >>> z = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
        >>> round(z.mean().item(), 1), round(z.std().item(), 1)
        (3.0, 1.0)
        >>> z.sum().backward()
        >>> mu.grad[0].item()
        1.0
    """
    _checks.tensors("reparameterize", mu=mu, logvar=logvar)
    if mu.shape != logvar.shape:
        raise UsageError(f"reparameterize: mu and logvar must have the same shape, "
                         f"got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over features and averaged over the batch.

    Math: KL = 1/2 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j), then mean over dim 0.
    Source: Kingma & Welling 2014, Auto-Encoding Variational Bayes, appendix B.
    Shapes: mu and logvar (B, ...) -> a scalar; every dim after the first is a feature.

    Example:
        >>> import torch
        >>> from endtoend.relax import gaussian_kl
        >>> gaussian_kl(torch.zeros(4, 8), torch.zeros(4, 8)).item()
        0.0
        >>> gaussian_kl(torch.ones(4, 8), torch.zeros(4, 8)).item()
        4.0
    """
    _checks.tensors("gaussian_kl", mu=mu, logvar=logvar)
    if mu.shape != logvar.shape:
        raise UsageError(f"gaussian_kl: mu and logvar must have the same shape, "
                         f"got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if mu.dim() < 2:
        raise UsageError(f"gaussian_kl: mu must be (batch, features...), got shape {tuple(mu.shape)}; "
                         "add a batch dim with mu[None]")
    per_element = mu.pow(2) + logvar.exp() - 1 - logvar
    return 0.5 * per_element.flatten(1).sum(dim=1).mean()
