import pytest
import torch

from endtoend.errors import UsageError
from endtoend.relax import quantize, soft_threshold, straight_through_round, straight_through_sign


def values() -> torch.Tensor:
    halves = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.0, -0.0])
    return torch.cat([halves, 3 * torch.randn(40, generator=torch.Generator().manual_seed(0))])


def test_straight_through_round_forward_is_exactly_round_backward_identity():
    x = values().requires_grad_(True)
    y = straight_through_round(x)
    assert torch.equal(y, torch.round(x))
    y.backward(torch.arange(x.numel(), dtype=x.dtype))
    assert torch.equal(x.grad, torch.arange(x.numel(), dtype=x.dtype))


def test_straight_through_sign_forward_is_exactly_sign_backward_clipped():
    x = values().requires_grad_(True)
    y = straight_through_sign(x)
    assert torch.equal(y, torch.sign(x))
    y.sum().backward()
    assert torch.equal(x.grad, (x.detach().abs() <= 1).float())
    assert x.grad.sum() > 0


def test_quantize_snaps_to_the_nearest_uniform_level():
    x = values().requires_grad_(True)
    y = quantize(x, bits=3, low=-2.0, high=2.0)
    step = 4.0 / 7
    levels = -2.0 + step * torch.arange(8)
    clipped = x.detach().clamp(-2.0, 2.0)
    nearest = levels[(clipped[:, None] - levels[None, :]).abs().argmin(dim=1)]
    torch.testing.assert_close(y.detach(), nearest)
    y.sum().backward()
    inside = (x.detach() >= -2.0) & (x.detach() <= 2.0)
    assert torch.equal(x.grad, inside.float())
    assert set(quantize(x, bits=1, low=0.0, high=1.0).tolist()) <= {0.0, 1.0}


def test_quantize_passes_the_gradient_at_both_ends_of_the_range_and_none_beyond():
    # The mask is explicit: torch releases differ in what clamp's gradient is at its bounds.
    x = torch.tensor([-1.0, -1.0 - 1e-6, 1.0, 1.0 + 1e-6, 0.3, -torch.inf, torch.inf], requires_grad=True)
    y = quantize(x, bits=2, low=-1.0, high=1.0)
    assert y.tolist() == pytest.approx([-1.0, -1.0, 1.0, 1.0, 1 / 3, -1.0, 1.0])
    y.backward(torch.arange(1.0, 8.0))
    assert x.grad.tolist() == [1.0, 0.0, 3.0, 0.0, 5.0, 0.0, 0.0]


def test_straight_through_sign_passes_the_gradient_at_plus_and_minus_one():
    x = torch.tensor([-1.0, 1.0, -1.0 - 1e-6, 1.0 + 1e-6, 0.0, torch.inf], requires_grad=True)
    y = straight_through_sign(x)
    assert y.tolist() == [-1.0, 1.0, -1.0, 1.0, 0.0, 1.0]
    y.backward(torch.full((6,), 2.0))
    assert x.grad.tolist() == [2.0, 2.0, 0.0, 0.0, 2.0, 0.0]


def test_quantize_rejects_bad_arguments():
    with pytest.raises(UsageError, match="bits"):
        quantize(torch.zeros(3), bits=0, low=0.0, high=1.0)
    with pytest.raises(UsageError, match="low < high"):
        quantize(torch.zeros(3), bits=2, low=1.0, high=1.0)


def test_soft_threshold_approaches_the_step_and_trains_the_threshold():
    x = torch.linspace(-1, 1, 21, dtype=torch.float64)
    x = x[x.abs() > 0.05]  # away from the threshold the sigmoid saturates
    step = (x > 0.0).double()
    torch.testing.assert_close(soft_threshold(x, 0.0, sharpness=500.0), step, atol=1e-3, rtol=0)
    assert torch.equal(soft_threshold(x, 0.0, hard=True), step)

    threshold = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    hard = soft_threshold(x, threshold, sharpness=5.0, hard=True)
    assert torch.equal(hard, (x > 0.3).double())
    hard.sum().backward()
    assert threshold.grad < 0  # raising the threshold closes gates


def test_soft_threshold_gradcheck():
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    threshold = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, t: soft_threshold(a, t, sharpness=3.0), (x, threshold))


@pytest.mark.parametrize("relaxation", [
    straight_through_round,
    straight_through_sign,
    lambda x: quantize(x, bits=4, low=-1.0, high=1.0),
    lambda x: soft_threshold(x, torch.zeros((), device=x.device), hard=True),
])
def test_device_and_dtype_follow_the_input(relaxation):
    assert relaxation(torch.zeros(2, 3, device="meta")).device.type == "meta"
    assert relaxation(torch.zeros(2, 3, dtype=torch.float64)).dtype == torch.float64
