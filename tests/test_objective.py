import pytest
import torch
import torch.nn.functional as F
from torch import nn

from endtoend.errors import UsageError
from endtoend.objective import Objective


class TwoHeads(nn.Module):
    """A shared trunk feeding two regression heads: the smallest multi-task model."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 16)
        self.head_a, self.head_b = nn.Linear(16, 1), nn.Linear(16, 1)

    def forward(self, x):
        features = self.trunk(x).relu()
        return {"a": self.head_a(features), "b": self.head_b(features)}


def two_task_data(noise_b: float = 0.0, n: int = 256):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    y_a = x @ torch.randn(4, 1, generator=generator)
    y_b = x @ torch.randn(4, 1, generator=generator) + noise_b * torch.randn(n, 1, generator=generator)
    return x, {"a": y_a, "b": y_b}


def regression_terms(scale_b: float = 1.0):
    return {
        "a": lambda out, y: F.mse_loss(out["a"], y["a"]),
        "b": lambda out, y: scale_b * F.mse_loss(out["b"], y["b"]),
    }


def train(objective: Objective, model: nn.Module, steps: int, noise_b: float = 0.0, lr: float = 0.02):
    x, y = two_task_data(noise_b)
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        objective(model(x), y).backward()
        optimizer.step()
        objective.renormalize_()


def test_fixed_weighting_is_exactly_the_weighted_sum():
    torch.manual_seed(0)
    outputs, targets = torch.randn(8, 3), torch.randint(0, 3, (8,))
    terms = {
        "cross_entropy": nn.CrossEntropyLoss(),
        "l2": lambda out, _: out.pow(2).mean(),
        "l1": lambda out, _: out.abs().mean(),
    }
    objective = Objective(terms, weights={"cross_entropy": 0.5, "l1": 2.0})
    total = objective(outputs, targets)
    ce, l2, l1 = F.cross_entropy(outputs, targets), outputs.pow(2).mean(), outputs.abs().mean()
    assert torch.equal(total, 0.5 * ce + 1.0 * l2 + 2.0 * l1)
    assert torch.equal(objective.last_terms["l1"], l1) and not objective.last_terms["l1"].requires_grad
    assert list(objective.parameters()) == []
    logged = objective.log_values()
    assert logged["weight/cross_entropy"] == 0.5 and logged["loss/l2"] == pytest.approx(l2.item())


def test_uncertainty_weighting_down_weights_the_noisy_task():
    torch.manual_seed(0)
    model = TwoHeads()
    objective = Objective(regression_terms(), weighting="uncertainty")
    train(objective, model, steps=100, noise_b=3.0)
    log_variance_a, log_variance_b = objective.log_variances.tolist()
    assert log_variance_b > log_variance_a + 1.0  # noise variance 9: s_b heads for log 9 = 2.2
    weights = objective.current_weights()
    assert weights["b"] < weights["a"]


def test_uncertainty_total_matches_the_formula():
    objective = Objective(regression_terms(), weighting="uncertainty")
    with torch.no_grad():
        objective.log_variances.copy_(torch.tensor([0.5, -1.0]))
    x, y = two_task_data()
    outputs = {"a": torch.zeros(len(x), 1), "b": torch.zeros(len(x), 1)}
    loss_a, loss_b = y["a"].pow(2).mean(), y["b"].pow(2).mean()
    expected = torch.exp(torch.tensor(-0.5)) * loss_a + 0.5 + torch.exp(torch.tensor(1.0)) * loss_b - 1.0
    assert torch.allclose(objective(outputs, y), expected)


def test_gradnorm_raises_the_weight_of_the_task_with_small_gradients():
    torch.manual_seed(0)
    model = TwoHeads()
    objective = Objective(regression_terms(scale_b=100.0), weighting="gradnorm",
                          shared_parameters=model.trunk.parameters())
    train(objective, model, steps=25)
    weights = objective.task_weights.detach()
    assert weights.sum().item() == pytest.approx(2.0, abs=1e-5)
    assert weights[0] > 1.2 and weights[1] < 0.8  # task a's gradients are ~100x smaller


def test_gradnorm_weight_gradient_equals_the_papers_double_backward():
    torch.manual_seed(0)
    model = TwoHeads()
    shared = list(model.trunk.parameters())
    objective = Objective(regression_terms(scale_b=10.0), weighting="gradnorm", shared_parameters=shared, alpha=1.5)
    x, y = two_task_data()
    with torch.no_grad():
        objective.task_weights.copy_(torch.tensor([0.7, 1.3]))
        objective.initial_losses.copy_(torch.tensor([2.0, 50.0]))
    total = objective(model(x), y)
    total.backward()

    # The paper's recipe, written out: G_i = ||d(w_i L_i)/dW|| with a double backward.
    weights = objective.task_weights.detach().clone().requires_grad_()
    outputs = model(x)
    losses = torch.stack([term(outputs, y) for term in regression_terms(scale_b=10.0).values()])
    norms = torch.stack([
        torch.linalg.vector_norm(torch.cat([g.flatten() for g in torch.autograd.grad(w * l, shared, create_graph=True)]))
        for w, l in zip(weights, losses)
    ])
    ratios = losses.detach() / torch.tensor([2.0, 50.0])
    target = (norms.mean() * (ratios / ratios.mean()) ** 1.5).detach()
    (expected,) = torch.autograd.grad((norms - target).abs().sum(), weights)

    assert torch.allclose(objective.task_weights.grad, expected, rtol=1e-4)
    assert total.item() == pytest.approx((weights.detach() * losses.detach()).sum().item(), rel=1e-6)
    assert objective.last_balance_loss is not None


def test_gradnorm_records_initial_losses_and_is_inert_in_eval():
    model = TwoHeads()
    objective = Objective(regression_terms(), weighting="gradnorm", shared_parameters=model.trunk.parameters())
    x, y = two_task_data()
    objective.eval()
    objective(model(x), y).backward()
    assert objective.task_weights.grad is None and torch.isnan(objective.initial_losses).all()
    objective.train()
    objective(model(x), y)
    assert torch.equal(objective.initial_losses, torch.stack(list(objective.last_terms.values())))


def test_gradnorm_shared_parameters_bound_after_construction_train_as_if_given_at_construction():
    """A recipe builds its fit settings (the objective) before its model: binding the shared layer
    later must give the same training, and a forward before binding is a one-line UsageError."""
    torch.manual_seed(0)
    model = TwoHeads()
    torch.manual_seed(0)
    twin = TwoHeads()
    given = Objective(regression_terms(scale_b=100.0), weighting="gradnorm", shared_parameters=model.trunk.parameters())
    later = Objective(regression_terms(scale_b=100.0), weighting="gradnorm")
    x, y = two_task_data()
    with pytest.raises(UsageError, match="bind_shared_parameters"):
        later(twin(x), y)
    assert later.bind_shared_parameters(twin.trunk.parameters()) is later
    train(given, model, steps=50)
    train(later, twin, steps=50)
    assert torch.equal(later.task_weights, given.task_weights) and not torch.equal(given.task_weights, torch.ones(2))
    assert torch.equal(later.initial_losses, given.initial_losses)
    with pytest.raises(UsageError, match="only weighting='gradnorm'"):
        Objective(regression_terms(), weighting="uncertainty").bind_shared_parameters(model.trunk.parameters())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"terms": {}}, "at least one"),
        ({"terms": regression_terms(), "weighting": "equal"}, "unknown weighting 'equal'"),
        ({"terms": regression_terms(), "weighting": "uncertainty", "weights": {"a": 2.0}}, "learned"),
        ({"terms": regression_terms(), "weights": {"c": 2.0}}, "unknown terms"),
        ({"terms": regression_terms(), "weighting": "gradnorm", "shared_parameters": []}, "shared_parameters"),
        ({"terms": regression_terms(), "weighting": "gradnorm",
          "shared_parameters": [nn.Parameter(torch.ones(2), requires_grad=False)]}, "require gradients"),
    ],
)
def test_bad_configuration_is_a_usage_error(arguments, message):
    with pytest.raises(UsageError, match=message):
        Objective(**arguments)


def test_non_scalar_term_is_a_usage_error():
    objective = Objective({"per_sample": lambda out, y: (out - y).pow(2)})
    with pytest.raises(UsageError, match=r"'per_sample' returned \(4,\)"):
        objective(torch.zeros(4), torch.ones(4))


@pytest.mark.parametrize("arguments, named", [
    ({"weights": {"a": -1.0}}, "weight of term 'a'"), ({"weights": {"a": float("nan")}}, "weight of term 'a'"),
    ({"weights": {"a": "1"}}, "weight of term 'a'"), ({"alpha": -1.0, "weighting": "uncertainty"}, "alpha"),
])
def test_bad_weights_and_alpha_are_one_line_usage_errors(arguments, named):
    with pytest.raises(UsageError, match=named):
        Objective({"a": lambda o, t: o.sum()}, **arguments)


def test_a_term_that_is_not_callable_is_refused():
    with pytest.raises(UsageError, match="term 'a' must be a callable"):
        Objective({"a": 3})


def test_terms_that_are_not_a_dict_are_refused():
    with pytest.raises(UsageError, match="Objective terms must be a dict of name -> loss, got list"):
        Objective([lambda o, t: o.sum()])
