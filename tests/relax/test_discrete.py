import math

import pytest
import torch
import torch.nn.functional as F

from endtoend.errors import UsageError
from endtoend.relax import (
    anneal_temperature,
    gumbel_softmax,
    relaxed_bernoulli,
    soft_argmax,
    straight_through_argmax,
)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gumbel_softmax_soft_rows_sum_to_one_and_is_reproducible():
    logits = torch.randn(4, 3, 5, generator=seeded(1))
    y = gumbel_softmax(logits, tau=0.7, dim=1, generator=seeded(2))
    assert y.shape == logits.shape
    torch.testing.assert_close(y.sum(dim=1), torch.ones(4, 5))
    assert torch.equal(y, gumbel_softmax(logits, tau=0.7, dim=1, generator=seeded(2)))
    assert not torch.equal(y, gumbel_softmax(logits, tau=0.7, dim=1, generator=seeded(3)))


def test_gumbel_softmax_samples_follow_the_categorical():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    samples = gumbel_softmax(logits.expand(20000, 4), hard=True, generator=seeded(0))
    frequencies = samples.mean(dim=0)
    torch.testing.assert_close(frequencies, torch.softmax(logits, dim=0), atol=0.015, rtol=0)


def test_hard_gumbel_is_exactly_one_hot_with_the_soft_gradient():
    logits = torch.randn(8, 6, generator=seeded(1), requires_grad=True)
    weights = torch.randn(8, 6, generator=seeded(2))
    hard = gumbel_softmax(logits, tau=0.5, hard=True, generator=seeded(3))
    assert torch.equal(hard, F.one_hot(hard.argmax(dim=-1), 6).float())
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    soft = gumbel_softmax(logits, tau=0.5, hard=False, generator=seeded(3))
    (grad_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    torch.testing.assert_close(grad_hard, grad_soft)
    assert torch.isfinite(grad_hard).all() and grad_hard.abs().sum() > 0


def test_gumbel_softmax_gradcheck():
    logits = torch.randn(3, 4, dtype=torch.float64, generator=seeded(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gumbel_softmax(x, tau=0.8, generator=seeded(5)), logits)


def test_anneal_temperature_decays_exponentially_then_holds():
    assert anneal_temperature(0, 100, tau0=2.0, tau_min=0.5) == 2.0
    assert math.isclose(anneal_temperature(50, 100, tau0=2.0, tau_min=0.5), 1.0)
    assert math.isclose(anneal_temperature(100, 100, tau0=2.0, tau_min=0.5), 0.5)
    assert math.isclose(anneal_temperature(10_000, 100, tau0=2.0, tau_min=0.5), 0.5)
    taus = [anneal_temperature(s, 100) for s in range(0, 101, 10)]
    assert all(a > b for a, b in zip(taus, taus[1:]))
    ratios = [b / a for a, b in zip(taus, taus[1:])]
    assert max(ratios) - min(ratios) < 1e-12  # a constant ratio per step: exponential
    with pytest.raises(UsageError, match="tau_min"):
        anneal_temperature(0, 100, tau0=0.1, tau_min=1.0)
    with pytest.raises(UsageError, match="total_steps"):
        anneal_temperature(0, 0)


def test_straight_through_argmax_is_one_hot_forward_softmax_backward():
    logits = torch.randn(2, 5, 7, generator=seeded(0), requires_grad=True)
    weights = torch.randn(2, 5, 7, generator=seeded(1))
    y = straight_through_argmax(logits, dim=1)
    expected = F.one_hot(logits.argmax(dim=1), 5).permute(0, 2, 1).float()
    assert torch.equal(y, expected)
    (grad,) = torch.autograd.grad((y * weights).sum(), logits)
    (grad_softmax,) = torch.autograd.grad((torch.softmax(logits, dim=1) * weights).sum(), logits)
    torch.testing.assert_close(grad, grad_softmax)
    assert grad.abs().sum() > 0


def test_soft_argmax_approaches_argmax_and_has_gradient():
    x = torch.randn(6, 10, dtype=torch.float64, generator=seeded(0))
    torch.testing.assert_close(soft_argmax(x, beta=1e4), x.argmax(dim=-1).double(), atol=1e-3, rtol=0)
    columns = soft_argmax(x, dim=0, beta=1e4)
    torch.testing.assert_close(columns, x.argmax(dim=0).double(), atol=1e-3, rtol=0)
    assert soft_argmax(x, beta=0.0).allclose(torch.full((6,), 4.5, dtype=torch.float64))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: soft_argmax(v, beta=2.0), x)


def test_relaxed_bernoulli_matches_bernoulli_means_and_hard_is_binary():
    logits = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    samples = relaxed_bernoulli(logits.expand(20000, 3), tau=0.5, hard=True, generator=seeded(0))
    assert set(samples.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(samples.mean(dim=0), torch.sigmoid(logits.detach()), atol=0.015, rtol=0)
    (grad,) = torch.autograd.grad(samples.sum(), logits)
    assert torch.isfinite(grad).all() and (grad > 0).all()  # more logit, more ones


def test_relaxed_bernoulli_gradcheck():
    logits = torch.randn(5, dtype=torch.float64, generator=seeded(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: relaxed_bernoulli(x, tau=0.7, generator=seeded(1)), logits)


@pytest.mark.parametrize("relaxation", [
    lambda x: gumbel_softmax(x, hard=True),
    lambda x: straight_through_argmax(x),
    lambda x: soft_argmax(x),
    lambda x: relaxed_bernoulli(x, tau=0.5, hard=True),
])
def test_device_and_dtype_follow_the_input(relaxation):
    # The meta device fails on any tensor created on the CPU by mistake, so this stands in
    # for a CUDA run; float64 in must give float64 out.
    assert relaxation(torch.zeros(2, 5, device="meta")).device.type == "meta"
    assert relaxation(torch.zeros(2, 5, dtype=torch.float64)).dtype == torch.float64
