"""Models with a gradient cut: each one trains silently while some parameters never learn.

Every line that cuts carries a marker comment `# CUT <case>`; the tests find the expected line
from it. `CASES[name]` builds `(model, inputs, kind, op, starved)`: what the audit must report.
"""

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Normal, OneHotCategorical

D = 6


def _x(batch: int = 8, *shape: int) -> torch.Tensor:
    return torch.randn(batch, *(shape or (D,)), generator=torch.Generator().manual_seed(1))


class ArgmaxRouter(nn.Module):
    """A router picks a code by argmax: the router never learns, the head does."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(D, 4)
        self.codes = nn.Embedding(4, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        code = self.router(x).argmax(-1)  # CUT argmax
        return self.head(x + self.codes(code))


class Rounding(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        q = torch.round(self.enc(x) * 4)  # CUT round
        return self.head(q)


class Detach(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        h = torch.tanh(self.enc(x)).detach()  # CUT detach
        return self.head(h)


class ItemScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Linear(D, 1)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        s = self.scale(x).mean().item()  # CUT item
        return self.head(x) * s


class NoGradEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, D))
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        with torch.no_grad():
            h = self.enc(x)  # CUT no_grad
        return self.head(h)


class IntegerCast(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, 3)
        self.table = nn.Embedding(8, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        code = (self.enc(x) * 3).long()  # CUT long
        return self.head(self.table(code.clamp(0, 7)).sum(1))


class NumpyTrip(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        a = self.enc(x).detach().cpu().numpy()  # CUT numpy
        h = torch.from_numpy(np.tanh(a))
        return self.head(h)


class ToList(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        h = torch.tensor(self.enc(x).tolist())  # CUT tolist
        return self.head(h)


class DotData(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        h = self.enc(x).data  # CUT data
        return self.head(torch.relu(h))


class ComparisonMask(nn.Module):
    """A learned gate used only through a hard comparison: the gate never learns."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        mask = (self.gate(x) > 0).float()  # CUT mask
        return self.head(x * mask)


class DataDependentBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.decider = nn.Linear(D, 1)
        self.a = nn.Linear(D, 2)
        self.b = nn.Linear(D, 2)

    def forward(self, x):
        if self.decider(x).mean() > 0:  # CUT branch
            return self.a(x)
        return self.b(x) + self.a(x)


class BackwardReturnsNone(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        return None


class CustomFunctionWithoutGradient(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        h = BackwardReturnsNone.apply(self.enc(x))  # CUT function
        return self.head(h)


class HardThreshold(torch.autograd.Function):
    """Returns a mask marked non-differentiable: nothing flows back through it."""

    @staticmethod
    def forward(ctx, x):
        out = (x > 0).to(x.dtype)
        ctx.mark_non_differentiable(out)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class CustomFunctionNonDifferentiable(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        h = HardThreshold.apply(self.enc(x))  # CUT nondiff_function
        return self.head(h * x)


class UnusedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Linear(D, 2)
        self.auxiliary = nn.Linear(D, 2)  # CUT unused

    def forward(self, x):
        return self.main(x)


class DeadReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(D, D)
        self.out = nn.Linear(D, 2)
        with torch.no_grad():
            self.hidden.bias.fill_(-100.0)  # every pre-activation negative: the ReLU is dead

    def forward(self, x):
        h = torch.relu(self.hidden(x))  # CUT dead
        return self.out(h)


class SignBinarizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        bits = torch.sign(self.enc(x))  # CUT sign
        return self.head(bits)


class VAEWithSample(nn.Module):
    """`.sample()` instead of `.rsample()`: the encoder gets no gradient from the decoder."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.mu = nn.Linear(D, 3)
        self.log_sigma = nn.Linear(D, 3)
        self.dec = nn.Linear(3, D)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        z = Normal(self.mu(h), self.log_sigma(h).exp()).sample()  # CUT sample
        return self.dec(z)


class TopKIndicesOnly(nn.Module):
    """Selects items by top-k scores but never uses the scores: the scorer never learns."""

    def __init__(self):
        super().__init__()
        self.scorer = nn.Linear(D, 1)
        self.head = nn.Linear(D, 2)

    def forward(self, x):  # x: (batch, items, D)
        picked = self.scorer(x).squeeze(-1).topk(2, dim=1).indices  # CUT topk
        chosen = torch.gather(x, 1, picked.unsqueeze(-1).expand(-1, -1, D))
        return self.head(chosen.mean(1))


class BidirectionalLastStep(nn.Module):
    """Reads the last time step of a bidirectional LSTM: the reverse direction has seen one
    step there, from a zero state, so its recurrent weights get exactly zero gradient."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(D, 4, batch_first=True, bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # x: (batch, time, D)
        out, _ = self.lstm(x)  # CUT bilstm_last_step
        return self.head(out[:, -1])


class BernoulliGate(nn.Module):
    """Stochastic binary gates drawn with torch.bernoulli: the sample's derivative with respect
    to the probabilities is zero, so the gate never learns."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        mask = torch.bernoulli(torch.sigmoid(self.gate(x)))  # CUT bernoulli
        return self.head(x * mask)


class PoissonCounts(nn.Module):
    """Counts drawn with torch.poisson from a learned rate: the rate never learns."""

    def __init__(self):
        super().__init__()
        self.rate = nn.Linear(D, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        counts = torch.poisson(torch.nn.functional.softplus(self.rate(x)))  # CUT poisson
        return self.head(counts)


class CategoricalCode(nn.Module):
    """A code drawn from Categorical(logits=...): one cut (the multinomial draw), whatever the
    distribution's argument check does with the logits."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(D, 4)
        self.codes = nn.Embedding(4, D)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        code = Categorical(logits=self.router(x)).sample()  # CUT categorical
        return self.head(x + self.codes(code))


class OneHotCategoricalCode(nn.Module):
    """The same with OneHotCategorical, whose sample is cast back to the logits' dtype."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(D, 4)
        self.codes = nn.Linear(4, D, bias=False)
        self.head = nn.Linear(D, 2)

    def forward(self, x):
        choice = OneHotCategorical(logits=self.router(x)).sample()  # CUT one_hot_categorical
        return self.head(x + self.codes(choice))


class NormalUnitScale(nn.Module):
    """`Normal(mu, 1.0).sample()`: one cut (the sample); broadcasting mu against the constant
    scale is none."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, 3)
        self.dec = nn.Linear(3, D)

    def forward(self, x):
        z = Normal(self.enc(x), 1.0).sample()  # CUT normal_unit_scale
        return self.dec(z)


class Front(nn.Module):
    """A harness, not a case: front -> cut -> back, so `cut` alone decides whether `front` learns.
    Shared by tests/audit/test_audit.py and tests/relax/test_registry.py."""

    def __init__(self, cut):
        super().__init__()
        torch.manual_seed(0)
        self.front = nn.Linear(4, 6)
        self.back = nn.Linear(6, 1)
        self.cut = cut

    def forward(self, x):
        return self.back(self.cut(self.front(x)))


_ENC = ["enc.bias", "enc.weight"]
CASES = {
    "argmax": lambda: (ArgmaxRouter(), _x(), "cut", "Tensor.argmax", ["router.bias", "router.weight"]),
    "round": lambda: (Rounding(), _x(), "cut", "round", _ENC),
    "detach": lambda: (Detach(), _x(), "cut", "Tensor.detach", _ENC),
    "item": lambda: (ItemScale(), _x(), "cut", "Tensor.item", ["scale.bias", "scale.weight"]),
    "no_grad": lambda: (NoGradEncoder(), _x(), "cut", "no_grad",
                        ["enc.0.bias", "enc.0.weight", "enc.2.bias", "enc.2.weight"]),
    "long": lambda: (IntegerCast(), _x(), "cut", "Tensor.long", _ENC),
    "numpy": lambda: (NumpyTrip(), _x(), "cut", "Tensor.detach", _ENC),
    "tolist": lambda: (ToList(), _x(), "cut", "Tensor.tolist", _ENC),
    "data": lambda: (DotData(), _x(), "cut", "Tensor.data", _ENC),
    "mask": lambda: (ComparisonMask(), _x(), "cut", "Tensor.gt", ["gate.bias", "gate.weight"]),
    "branch": lambda: (DataDependentBranch(), _x(), "cut", "Tensor.gt", ["decider.bias", "decider.weight"]),
    "function": lambda: (CustomFunctionWithoutGradient(), _x(), "no_backward", "BackwardReturnsNone", _ENC),
    "nondiff_function": lambda: (CustomFunctionNonDifferentiable(), _x(), "no_backward", "HardThreshold", _ENC),
    "unused": lambda: (UnusedBranch(), _x(), "unused", None, ["auxiliary.bias", "auxiliary.weight"]),
    "dead": lambda: (DeadReLU(), _x(), "dead", None, ["hidden.bias", "hidden.weight", "out.weight"]),
    "sign": lambda: (SignBinarizer(), _x(), "cut", "sign", _ENC),
    "sample": lambda: (VAEWithSample(), _x(), "cut", "no_grad",
                       ["enc.bias", "enc.weight", "log_sigma.bias", "log_sigma.weight", "mu.bias", "mu.weight"]),
    "bilstm_last_step": lambda: (BidirectionalLastStep(), _x(4, 5, D), "dead", None, ["lstm.weight_hh_l0_reverse"]),
    "topk": lambda: (TopKIndicesOnly(), _x(8, 5, D), "cut", "Tensor.topk.indices", ["scorer.bias", "scorer.weight"]),
    "bernoulli": lambda: (BernoulliGate(), _x(), "cut", "bernoulli", ["gate.bias", "gate.weight"]),
    "poisson": lambda: (PoissonCounts(), _x(), "cut", "poisson", ["rate.bias", "rate.weight"]),
    "categorical": lambda: (CategoricalCode(), _x(), "cut", "multinomial", ["router.bias", "router.weight"]),
    "one_hot_categorical": lambda: (OneHotCategoricalCode(), _x(), "cut", "multinomial",
                                    ["router.bias", "router.weight"]),
    "normal_unit_scale": lambda: (NormalUnitScale(), _x(), "cut", "no_grad", _ENC),
}


def make_numpy_trip():
    """A factory for `e2e audit tests/audit/zoo_broken.py:make_numpy_trip`."""
    torch.manual_seed(0)
    return NumpyTrip(), _x()


def make_raising():
    raise ValueError("no data here")


def make_wrong_shape():
    return NumpyTrip()



class ForgetsToReturn(nn.Module):
    """A forward without `return`: bad input to the audit (a UsageError), not a cut."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(D, 2)

    def forward(self, x):
        self.layer(x)


def make_returns_none():
    return ForgetsToReturn(), _x()


class RaisesInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(D, 2)

    def forward(self, x):
        raise ValueError("my forward is broken")  # RAISE forward


def make_raising_forward():
    return RaisesInForward(), _x()


def make_unknown_loss():
    return nn.Linear(D, 2), _x(), "crossentropy", torch.zeros(8, dtype=torch.long)
