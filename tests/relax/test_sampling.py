import pytest
import torch
from torch.distributions import Normal, kl_divergence

from endtoend.errors import UsageError
from endtoend.relax import gaussian_kl, reparameterize


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_reparameterize_has_the_right_moments_and_is_reproducible():
    mu = torch.full((50000,), -2.0)
    logvar = torch.full((50000,), torch.tensor(0.25).log().item())
    z = reparameterize(mu, logvar, generator=seeded(0))
    assert abs(z.mean().item() + 2.0) < 0.01
    assert abs(z.std().item() - 0.5) < 0.01
    assert torch.equal(z, reparameterize(mu, logvar, generator=seeded(0)))


def test_reparameterize_gradients_are_those_of_mu_plus_sigma_eps():
    mu = torch.randn(4, 3, generator=seeded(1), requires_grad=True)
    logvar = torch.randn(4, 3, generator=seeded(2), requires_grad=True)
    z = reparameterize(mu, logvar, generator=seeded(3))
    z.sum().backward()
    eps = torch.randn(4, 3, generator=seeded(3))
    assert torch.equal(mu.grad, torch.ones(4, 3))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


def test_reparameterize_gradcheck():
    mu = torch.randn(3, 2, dtype=torch.float64, generator=seeded(0), requires_grad=True)
    logvar = torch.randn(3, 2, dtype=torch.float64, generator=seeded(1), requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, v: reparameterize(m, v, generator=seeded(2)), (mu, logvar))


def test_gaussian_kl_matches_torch_distributions():
    mu = torch.randn(5, 2, 3, dtype=torch.float64, generator=seeded(0))
    logvar = torch.randn(5, 2, 3, dtype=torch.float64, generator=seeded(1))
    posterior = Normal(mu, torch.exp(0.5 * logvar))
    expected = kl_divergence(posterior, Normal(0.0, 1.0)).flatten(1).sum(dim=1).mean()
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert gaussian_kl(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0.0


def test_gaussian_kl_gradcheck_and_errors():
    mu = torch.randn(3, 4, dtype=torch.float64, generator=seeded(0), requires_grad=True)
    logvar = torch.randn(3, 4, dtype=torch.float64, generator=seeded(1), requires_grad=True)
    assert torch.autograd.gradcheck(gaussian_kl, (mu, logvar))
    with pytest.raises(UsageError, match="batch"):
        gaussian_kl(torch.zeros(3), torch.zeros(3))
    with pytest.raises(UsageError, match="same shape"):
        reparameterize(torch.zeros(3, 2), torch.zeros(3, 1))


def test_device_and_dtype_follow_the_input():
    meta = torch.zeros(2, 3, device="meta")
    assert reparameterize(meta, meta).device.type == "meta"
    assert gaussian_kl(meta, meta).device.type == "meta"
    double = torch.zeros(2, 3, dtype=torch.float64)
    assert reparameterize(double, double).dtype == torch.float64
