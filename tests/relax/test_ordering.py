import pytest
import torch
from scipy.optimize import isotonic_regression
from scipy.stats import rankdata

from endtoend.errors import UsageError
from endtoend.relax import soft_rank, soft_sort, soft_topk
from endtoend.relax.ordering import _isotonic_decreasing


def random(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_parallel_pool_adjacent_violators_matches_scipy():
    y = torch.cat([random(20, 12), torch.tensor([[3.0, 3.0, 1.0, 5.0, 5.0, 0.0, 0.0, 2.0, 9.0, 1.0, 1.0, 1.0]],
                                                dtype=torch.float64)])
    ours = _isotonic_decreasing(y)
    for row, fitted in zip(y, ours):
        expected = isotonic_regression(row.numpy(), increasing=False).x
        torch.testing.assert_close(fitted, torch.from_numpy(expected.copy()))


@pytest.mark.parametrize("descending", [False, True])
def test_soft_sort_with_large_strength_matches_torch_sort(descending):
    x = random(2, 3, 8)
    hard = torch.sort(x, dim=-1, descending=descending).values
    torch.testing.assert_close(soft_sort(x, strength=1e3, descending=descending), hard, atol=1e-3, rtol=0)
    assert soft_sort(x.float(), strength=1e3).shape == (2, 3, 8)


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("strength", [1e4, 1e6])
def test_soft_sort_at_large_strength_is_exactly_the_sort_in_float32(strength, descending):
    # Values of order 1, strength far above the largest gap: every isotonic block is a single
    # entry and the projection returns the sorted input bit for bit (before, float32 lost
    # ulp(strength * n) ~ 8e-3 here).
    x = random(64, 16).float()
    hard = torch.sort(x, dim=-1, descending=descending).values
    assert torch.equal(soft_sort(x, strength=strength, descending=descending), hard)
    # ... and the Jacobian is the sorting permutation: each output's gradient reaches only its source.
    x.requires_grad_(True)
    weights = random(64, 16, seed=1).float()
    (grad,) = torch.autograd.grad((soft_sort(x, strength=strength, descending=descending) * weights).sum(), x)
    order = torch.sort(x.detach(), dim=-1, descending=descending).indices
    assert torch.equal(grad, torch.zeros_like(weights).scatter(-1, order, weights))


def test_soft_sort_is_exact_just_above_the_largest_gap_and_merges_below_it():
    x = torch.tensor([[0.0, 3.0, 1.0]])  # gaps 1 and 2
    assert torch.equal(soft_sort(x, strength=2.01), torch.tensor([[0.0, 1.0, 3.0]]))
    # Below the largest gap the two ends of that gap pool: 1 and 3 move towards each other.
    y = soft_sort(x, strength=1.5)
    assert y[0, 0].item() == 0.0 and 1.0 < y[0, 1].item() < y[0, 2].item() < 3.0
    torch.testing.assert_close(y.sum(), x.sum())


@pytest.mark.parametrize("strength", [0.1, 1.0, 10.0, 1e2, 1e4])
def test_soft_sort_and_soft_rank_in_float32_agree_with_float64(strength):
    # Pooled blocks as well as singletons: the float32 result stays within a few float32 ulps
    # of the float64 one on the same inputs at every strength (the old form lost ulp(strength * n)).
    x = (3 * random(32, 16)).float()
    sort_error = (soft_sort(x, strength=strength).double() - soft_sort(x.double(), strength=strength)).abs().max()
    assert sort_error < 1e-6
    rank_error = (soft_rank(x, strength=strength).double() - soft_rank(x.double(), strength=strength)).abs().max()
    assert rank_error < 1e-5  # ranks go up to n = 16


def test_soft_rank_at_large_strength_is_exactly_the_ranks_in_float32():
    x = random(64, 16).float()
    gaps = x.sort(dim=-1).values.diff(dim=-1)
    strength = 2.0 / gaps.min().item()  # strength * smallest gap > 1: every block a single entry
    hard = (x.argsort(dim=-1).argsort(dim=-1) + 1).float()
    assert torch.equal(soft_rank(x, strength=strength), hard)
    assert torch.equal(soft_rank(x, strength=1e7), hard)


def test_soft_sort_is_sorted_keeps_the_sum_and_tends_to_the_mean():
    x = random(5, 7)
    for strength in (0.1, 1.0, 10.0):
        y = soft_sort(x, strength=strength)
        assert (y[:, 1:] >= y[:, :-1] - 1e-12).all()
        torch.testing.assert_close(y.sum(dim=-1), x.sum(dim=-1))  # projection onto the permutahedron
    means = x.mean(dim=-1, keepdim=True).expand(5, 7)
    torch.testing.assert_close(soft_sort(x, strength=1e-6), means, atol=1e-4, rtol=0)


def test_soft_sort_gradcheck():
    x = random(3, 6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: soft_sort(v, strength=0.8), x)
    assert torch.autograd.gradcheck(lambda v: soft_sort(v, strength=0.8, descending=True), x)


def test_soft_rank_with_large_strength_gives_hard_ranks_and_average_ties():
    x = random(4, 9)
    hard = (x.argsort(dim=-1).argsort(dim=-1) + 1).double()
    torch.testing.assert_close(soft_rank(x, strength=1e3), hard, atol=1e-3, rtol=0)
    ties = torch.tensor([0.5, 2.0, 0.5, -1.0, 2.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(soft_rank(ties, strength=1e3), torch.from_numpy(rankdata(ties.numpy())))


def test_soft_rank_keeps_the_rank_sum_and_has_gradient():
    x = random(3, 5).requires_grad_(True)
    ranks = soft_rank(x, strength=0.5)
    torch.testing.assert_close(ranks.sum(dim=-1), torch.full((3,), 15.0, dtype=torch.float64))
    middle_rank = torch.full((3, 5), 3.0, dtype=torch.float64)
    torch.testing.assert_close(soft_rank(x, strength=1e-6), middle_rank, atol=1e-4, rtol=0)
    (grad,) = torch.autograd.grad((ranks * torch.arange(5.0, dtype=torch.float64)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda v: soft_rank(v, strength=0.5), x)


def test_soft_topk_rows_sum_to_k_and_small_tau_gives_the_hard_mask():
    x = random(6, 10)
    hard = torch.zeros_like(x).scatter(-1, x.topk(3, dim=-1).indices, 1.0)
    for tau in (1.0, 0.1, 1e-4):
        mask = soft_topk(x, k=3, tau=tau)
        torch.testing.assert_close(mask.sum(dim=-1), torch.full((6,), 3.0, dtype=torch.float64))
        assert ((mask >= 0) & (mask <= 1)).all()
    torch.testing.assert_close(soft_topk(x, k=3, tau=1e-4), hard, atol=1e-3, rtol=0)
    float_mask = soft_topk(x.float(), k=3, tau=0.5)
    torch.testing.assert_close(float_mask.sum(dim=-1), torch.full((6,), 3.0), atol=1e-4, rtol=0)


def test_soft_topk_implicit_gradient_keeps_rows_at_k():
    x = random(2, 3, 7).requires_grad_(True)
    mask = soft_topk(x, k=2, tau=0.5)
    (grad_of_sum,) = torch.autograd.grad(mask.sum(), x, retain_graph=True)
    torch.testing.assert_close(grad_of_sum, torch.zeros_like(x), atol=1e-10, rtol=0)
    (grad,) = torch.autograd.grad((mask * random(2, 3, 7, seed=1)).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda v: soft_topk(v, k=2, tau=0.5), x)


def test_soft_topk_rejects_k_out_of_range():
    with pytest.raises(UsageError, match="0 < k < n"):
        soft_topk(torch.zeros(2, 4), k=4)


def test_device_and_dtype_follow_the_input():
    assert soft_topk(torch.zeros(2, 5, device="meta"), k=2).device.type == "meta"
    x = random(2, 5).float()
    for relaxed in (soft_sort(x), soft_rank(x), soft_topk(x, k=2)):
        assert relaxed.dtype == torch.float32 and relaxed.device == x.device
