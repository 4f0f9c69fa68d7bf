import math

import pytest
import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.train.stability import (
    WeightEMA,
    all_finite,
    clip_gradients,
    gradient_norms,
    init_weights,
    first_non_finite,
    weight_norms,
)


def model_with_gradients(seed: int = 0, scale: float = 10.0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    (model(torch.randn(32, 8)).pow(2).sum() * scale).backward()
    return model


def global_norm(model: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])).item()


def test_norm_clipping_matches_torch_and_bounds_the_norm():
    ours, reference = model_with_gradients(), model_with_gradients()
    pre_clip = clip_gradients(ours.parameters(), max_norm=1.0)
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=1.0)
    assert pre_clip == expected.item() and pre_clip > 1.0
    assert global_norm(ours) <= 1.0 + 1e-6
    for mine, theirs in zip(ours.parameters(), reference.parameters()):
        assert torch.equal(mine.grad, theirs.grad)


def test_clipping_skips_missing_gradients_and_only_measures_without_limits():
    model = model_with_gradients()
    model[0].bias.grad = None
    before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert clip_gradients(model.parameters()) == pytest.approx(global_norm_without_none(model), rel=1e-6)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, [p for p in model.parameters() if p.grad is not None]))
    assert clip_gradients([nn.Parameter(torch.ones(2))], max_norm=1.0) == 0.0


def global_norm_without_none(model: nn.Module) -> float:
    return math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters() if p.grad is not None))


def test_value_clipping_bounds_each_element():
    model = model_with_gradients()
    assert max(p.grad.abs().max().item() for p in model.parameters()) > 0.5
    clip_gradients(model.parameters(), max_value=0.5)
    assert max(p.grad.abs().max().item() for p in model.parameters()) <= 0.5


def test_adaptive_clipping_caps_only_units_above_the_ratio():
    weight = nn.Parameter(torch.tensor([[3.0, 4.0], [3.0, 4.0]]))  # each row has norm 5
    weight.grad = torch.tensor([[6.0, 8.0], [0.3, 0.4]])  # ratios 2.0 and 0.1
    bias = nn.Parameter(torch.tensor([1.0, 0.0]))
    bias.grad = torch.tensor([0.0, 0.1])  # whole-tensor ratio 0.1
    untouched_row, untouched_bias = weight.grad[1].clone(), bias.grad.clone()
    clip_gradients([weight, bias], agc=0.5)
    assert torch.linalg.vector_norm(weight.grad[0]).item() / 5.0 == pytest.approx(0.5, rel=1e-6)
    assert torch.allclose(weight.grad[0], torch.tensor([1.5, 2.0]))  # direction kept
    assert torch.equal(weight.grad[1], untouched_row) and torch.equal(bias.grad, untouched_bias)


def test_adaptive_clipping_uses_eps_for_zero_weights():
    weight = nn.Parameter(torch.zeros(1, 3))
    weight.grad = torch.ones(1, 3)
    clip_gradients([weight], agc=0.1, eps=1e-3)
    assert torch.linalg.vector_norm(weight.grad).item() == pytest.approx(1e-4, rel=1e-5)


def test_bad_clip_value_is_a_usage_error():
    with pytest.raises(UsageError, match="max_norm"):
        clip_gradients(model_with_gradients().parameters(), max_norm=0.0)


def test_per_layer_norms_are_named_and_exact():
    model = model_with_gradients()
    model[2].bias.grad = None
    gradients, weights = gradient_norms(model), weight_norms(model)
    assert list(gradients) == ["0.weight", "0.bias", "2.weight"]
    assert list(weights) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert gradients["0.weight"] == pytest.approx(model[0].weight.grad.norm().item(), rel=1e-6)
    assert weights["2.bias"] == pytest.approx(model[2].bias.norm().item(), rel=1e-6)


def test_all_finite_catches_nan_gradient_and_inf_loss():
    model = model_with_gradients()
    loss = torch.tensor(1.0)
    assert all_finite(loss, model.parameters())
    assert not all_finite(torch.tensor(float("inf")), model.parameters())
    model[2].bias.grad[1] = float("nan")
    assert not all_finite(loss, model.parameters())


def test_first_non_finite_names_the_bad_tensor():
    state = nn.Linear(3, 2).state_dict()
    assert first_non_finite(state) is None
    state["bias"][0] = float("-inf")
    assert first_non_finite(state) == "bias"
    optimizer_like = {"state": {0: {"step": torch.tensor(3), "exp_avg": torch.tensor([1.0, float("nan")])}}}
    assert first_non_finite(optimizer_like) == "state.0.exp_avg"


def test_first_non_finite_leaves_every_tensor_bit_identical_across_dtypes():
    # the fused check multiplies in place by 1.0: values, even tiny float16 ones, must not move
    state = {"a": torch.tensor([6e-8, -0.0, 65504.0], dtype=torch.float16),
             "b": torch.randn(5, dtype=torch.bfloat16), "c": torch.randn(4, dtype=torch.float64),
             "n": torch.arange(3)}
    before = {k: v.clone() for k, v in state.items()}
    assert first_non_finite(state) is None
    assert all(torch.equal(state[k], before[k]) and state[k].dtype == before[k].dtype for k in state)
    assert torch.signbit(state["a"][1])
    state["c"][2] = float("inf")
    assert first_non_finite(state) == "c"


def test_orthogonal_init_gives_orthonormal_rows():
    layer = init_weights(nn.Linear(64, 16), scheme="orthogonal")
    assert torch.allclose(layer.weight @ layer.weight.T, torch.eye(16), atol=1e-5)
    assert torch.count_nonzero(layer.bias) == 0


def test_kaiming_and_xavier_statistics():
    torch.manual_seed(0)
    layer = init_weights(nn.Linear(512, 512), scheme="kaiming")
    assert layer.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    conv = init_weights(nn.Conv2d(64, 128, 3), scheme="xavier")
    fan_in, fan_out = 64 * 9, 128 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0


def test_unknown_scheme_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown init scheme 'he'"):
        init_weights(nn.Linear(2, 2), scheme="he")


class BasicBlock(nn.Module):  # torchvision's shape: conv-bn-relu-conv-bn + identity
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.downsample = None

    def forward(self, x):
        return x + self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))


class MarkedResidual(nn.Module):
    residual_last = "branch.2"

    def __init__(self, width: int = 4):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, x):
        return x + self.branch(x)


class PlainBlock(BasicBlock):  # looks like a block but has no skip: opts out
    residual_last = None


def zero_tensors(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if torch.count_nonzero(p) == 0]


def test_zero_init_residual_zeroes_exactly_the_last_layer_of_each_branch():
    model = nn.Sequential(BasicBlock(), nn.Flatten(), nn.Linear(4 * 2 * 2, 4), MarkedResidual(), PlainBlock())
    init_weights(model)
    biases = {name for name, _ in model.named_parameters() if name.endswith("bias")}
    assert set(zero_tensors(model)) - biases == {"0.bn2.weight", "3.branch.2.weight"}
    assert torch.equal(model[0].bn1.weight, torch.ones(4)) and torch.equal(model[4].bn2.weight, torch.ones(4))
    x = torch.randn(2, 4, 2, 2)
    assert torch.equal(model[0](x), x)  # each marked block starts as the identity
    assert set(zero_tensors(init_weights(model, zero_init_residual=False))) == biases


def test_residual_last_must_name_a_submodule():
    block = MarkedResidual()
    block.residual_last = "missing"
    with pytest.raises(UsageError, match="residual_last = 'missing'"):
        init_weights(block)


def test_ema_update_is_the_convex_combination():
    model = nn.Linear(3, 2)
    model.register_buffer("count", torch.tensor(0))
    ema = WeightEMA(model, decay=0.9, warmup=False)
    old = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
        model.count.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.params["weight"], 0.9 * old + 0.1 * model.weight.detach(), atol=1e-7)
    assert ema.buffers["count"].item() == 7  # buffers are copied, not averaged


def test_ema_warmup_decay():
    ema = WeightEMA(nn.Linear(1, 1), decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999


def test_ema_swapped_restores_weights_bit_exactly():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = WeightEMA(model, decay=0.5)
    originals = {n: t.clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    ema.update(model)
    trained = {n: t.clone() for n, t in model.state_dict().items()}
    with ema.swapped(model):
        assert torch.equal(model[0].weight, ema.params["0.weight"])
        assert not torch.equal(model[0].weight, trained["0.weight"])
    assert all(torch.equal(t, trained[n]) for n, t in model.state_dict().items())
    assert not torch.equal(trained["0.weight"], originals["0.weight"])


def test_ema_state_dict_round_trips_through_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = WeightEMA(model)
    ema.update(model)
    safetensors_torch.save_file(ema.state_dict(), tmp_path / "ema.safetensors")
    restored = WeightEMA(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    restored.load_state_dict(safetensors_torch.load_file(tmp_path / "ema.safetensors"))
    assert restored.num_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), ema.state_dict().values()))
    with pytest.raises(UsageError, match="missing"):
        restored.load_state_dict({"num_updates": torch.tensor(0)})
