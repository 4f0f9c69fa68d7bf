"""One global objective: named loss terms combined into one scalar, each term reported.

    objective = Objective({"class": classification_loss, "box": box_loss}, weighting="uncertainty")
    optimizer = torch.optim.AdamW([*model.parameters(), *objective.parameters()])
    loss = objective(model(x), targets)     # one scalar; objective.last_terms holds each term
    loss.backward()
    optimizer.step()
    objective.renormalize_()                # GradNorm only; a no-op for the other weightings

A term is any callable `term(outputs, targets) -> scalar Tensor`, so one model output (a
tensor, a dict of heads, ...) feeds every term. Terms that are nn.Modules (a loss with class
weights) are registered as submodules, so `objective.to(device)` moves them too.

Weightings, with L_i the value of term i:
  - "fixed": total = sum_i w_i L_i with the given weights (default 1). Nothing is learned.
  - "uncertainty" (Kendall, Gal & Cipolla, CVPR 2018): total = sum_i exp(-s_i) L_i + s_i with
    learnable s_i = log sigma_i^2, starting at 0. One form for every term: the paper's
    1/2 factor for regression terms is dropped, which doubles a regression term's share but
    keeps its optimum s_i = log L_i; for classification terms the paper's form has optimum
    log(2 L_i). A term with larger loss (or noise) learns a larger s_i, hence a smaller weight.
  - "gradnorm" (Chen et al., ICML 2018): total = sum_i w_i L_i with learnable w_i (starting
    at 1) trained only by the balancing loss sum_i |G_i - mean(G) * r_i^alpha|, where
    G_i = ||d(w_i L_i)/dW|| on `shared_parameters` W (the last shared layer's weights) and
    r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0)) is term i's relative inverse training rate.
    The target is held constant, as in the paper. Terms that train slower or have smaller
    gradients gain weight. `renormalize_()` after each optimizer step rescales w to sum to
    the number of terms.

The learnable s_i / w_i are this module's parameters: the optimizer must be given
`objective.parameters()` (gradient clipping should cover the model's parameters only).

GradNorm's `shared_parameters` may be left out at construction and bound later with
`objective.bind_shared_parameters(layer.parameters())`, for code that must build the objective
before the model (a recipe's fit settings exist before its model is built); a forward before
they are bound raises UsageError, so `fit` refuses before training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from endtoend.errors import UsageError

WEIGHTINGS = ("fixed", "uncertainty", "gradnorm")
Term = Callable[[Any, Any], Tensor]


class Objective(nn.Module):
    """Named loss terms -> one scalar; see the module docstring for the three weightings.

    Args:
        terms: name -> callable(outputs, targets) returning a scalar tensor. Order is kept.
        weighting: "fixed", "uncertainty" or "gradnorm".
        weights: per-term weights for "fixed" (missing names get 1.0).
        alpha: GradNorm's asymmetry; larger pulls harder toward equal training rates.
        shared_parameters: GradNorm only, the weights of the last layer shared by all terms
            (or None, and `bind_shared_parameters` before the first forward).
    """

    def __init__(
        self,
        terms: Mapping[str, Term],
        weighting: str = "fixed",
        *,
        weights: Mapping[str, float] | None = None,
        alpha: float = 1.5,
        shared_parameters: Iterable[Tensor] | None = None,
    ):
        super().__init__()
        if not isinstance(terms, Mapping):
            raise UsageError(f"Objective terms must be a dict of name -> loss, got {type(terms).__name__}; "
                             "e.g. Objective({'class': nn.CrossEntropyLoss(), 'box': nn.L1Loss()})")
        if not terms:
            raise UsageError("Objective needs at least one loss term, e.g. Objective({'loss': nn.CrossEntropyLoss()})")
        if weighting not in WEIGHTINGS:
            raise UsageError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
        if weights is not None and weighting != "fixed":
            raise UsageError(f"weights are learned under weighting={weighting!r}; drop weights= or use 'fixed'")
        unknown = sorted(set(weights or {}) - set(terms))
        if unknown:
            raise UsageError(f"weights name unknown terms {unknown}; the terms are {list(terms)}")
        for name, weight in (weights or {}).items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 or weight == float("inf"):
                raise UsageError(f"weight of term {name!r} must be a finite number >= 0, got {weight!r} "
                                 "(a negative weight maximises that term)")
        for name, term in terms.items():
            if not callable(term):
                raise UsageError(f"term {name!r} must be a callable (outputs, targets) -> scalar, got {type(term).__name__}")
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha >= 0):
            raise UsageError(f"alpha (GradNorm's asymmetry) must be a number >= 0, got {alpha!r}; the paper uses 1.5")
        if any("." in name or not name for name in terms):
            raise UsageError(f"term names must be non-empty and contain no '.', got {list(terms)}")
        self.weighting = weighting
        self.alpha = alpha
        self.terms = dict(terms)
        self.loss_modules = nn.ModuleDict({n: t for n, t in terms.items() if isinstance(t, nn.Module)})
        self.fixed_weights = {name: float((weights or {}).get(name, 1.0)) for name in terms}
        self.last_terms: dict[str, Tensor] = {}  # detached, unweighted; convert when logging
        self.last_balance_loss: Tensor | None = None  # GradNorm's balancing loss, detached
        if weighting == "uncertainty":
            self.log_variances = nn.Parameter(torch.zeros(len(terms)))
        if weighting == "gradnorm":
            self.task_weights = nn.Parameter(torch.ones(len(terms)))
            # NaN marks "not seen yet"; a buffer so that resuming keeps L_i(0).
            self.register_buffer("initial_losses", torch.full((len(terms),), float("nan")))
            self.shared_parameters: list[Tensor] = []
            if shared_parameters is not None:
                self.bind_shared_parameters(shared_parameters)

    def bind_shared_parameters(self, parameters: Iterable[Tensor]) -> Objective:
        """GradNorm: the weights W of the last layer shared by all terms, on which G_i is measured
        (replacing any bound before). Returns the objective."""
        if self.weighting != "gradnorm":
            raise UsageError(f"only weighting='gradnorm' uses shared parameters, not {self.weighting!r}")
        # A plain list, not registered: these belong to the model and its optimizer group.
        self.shared_parameters = [p for p in parameters if p.requires_grad]
        if not self.shared_parameters:
            raise UsageError("weighting='gradnorm' needs shared_parameters=<last shared layer>.parameters(), "
                             "got none that require gradients")
        return self

    def forward(self, outputs: Any, targets: Any) -> Tensor:
        """Total loss (one scalar). Records each unweighted term in `last_terms` (no sync)."""
        if self.weighting == "gradnorm" and not self.shared_parameters:
            raise UsageError("weighting='gradnorm' has no shared parameters: pass shared_parameters=<last shared "
                             "layer>.parameters() to Objective, or call objective.bind_shared_parameters(...) "
                             "before the first forward")
        losses = [self._evaluate(name, term, outputs, targets) for name, term in self.terms.items()]
        self.last_terms = {name: loss.detach() for name, loss in zip(self.terms, losses)}
        if self.weighting == "fixed":
            # Python's sum keeps this exactly w_1 L_1 + w_2 L_2 + ..., as a user would write it.
            return sum(self.fixed_weights[name] * loss for name, loss in zip(self.terms, losses))
        stacked = torch.stack(losses)
        if self.weighting == "uncertainty":
            log_variances = self.log_variances  # float32: type promotion lifts half-precision losses
            return (torch.exp(-log_variances) * stacked + log_variances).sum()
        # GradNorm: the task weights get gradient only from the balancing loss, never from the total.
        total = (self.task_weights.detach() * stacked).sum()
        if not (self.training and torch.is_grad_enabled() and stacked.requires_grad):
            return total
        balance = self._gradnorm_balance_loss(losses, stacked.detach())
        self.last_balance_loss = balance.detach()
        # balance - balance.detach() is exactly 0 in value but carries d(balance)/dw, so one
        # backward (scaled by an AMP GradScaler like every other gradient) trains both.
        return total + (balance - balance.detach())

    def _evaluate(self, name: str, term: Term, outputs: Any, targets: Any) -> Tensor:
        loss = term(outputs, targets)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise UsageError(f"loss term {name!r} returned {shape}; expected a scalar tensor (use reduction='mean')")
        return loss.reshape(())

    def _gradnorm_balance_loss(self, losses: list[Tensor], detached: Tensor) -> Tensor:
        initial = self.initial_losses
        with torch.no_grad():
            initial.copy_(torch.where(torch.isnan(initial), detached.to(initial.dtype), initial))
        # G_i = w_i * ||dL_i/dW|| exactly (w_i > 0 is a scalar factor), so dG_i/dw_i is the
        # plain gradient norm: no create_graph / double backward is needed.
        gradient_norms = torch.stack([self._shared_gradient_norm(loss) for loss in losses])
        weighted_norms = self.task_weights * gradient_norms.to(self.task_weights.dtype)
        loss_ratios = detached.to(initial.dtype) / initial.clamp_min(1e-12)
        inverse_rates = loss_ratios / loss_ratios.mean()
        target = (weighted_norms.mean() * inverse_rates**self.alpha).detach()
        return (weighted_norms - target).abs().sum()

    def _shared_gradient_norm(self, loss: Tensor) -> Tensor:
        """||dL/dW|| over the shared parameters; backpropagates only from L down to W."""
        gradients = torch.autograd.grad(loss, self.shared_parameters, retain_graph=True, allow_unused=True)
        present = [g for g in gradients if g is not None]
        if not present:  # this term does not depend on the shared layer
            return loss.new_zeros(()).detach()
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present)))

    @torch.no_grad()
    def renormalize_(self) -> None:
        """GradNorm: after optimizer.step(), clamp w_i > 0 and rescale so sum_i w_i = #terms.

        A no-op for "fixed" and "uncertainty", so the loop may call it unconditionally.
        """
        if self.weighting == "gradnorm":
            weights = self.task_weights.clamp_(min=1e-4)
            weights.mul_(len(weights) / weights.sum())

    def current_weights(self) -> dict[str, Tensor]:
        """The multiplier on each term right now: w_i, or exp(-s_i) under "uncertainty" (no sync)."""
        if self.weighting == "fixed":
            values = torch.tensor(list(self.fixed_weights.values()))
        elif self.weighting == "uncertainty":
            values = torch.exp(-self.log_variances.detach())
        else:
            values = self.task_weights.detach()
        return dict(zip(self.terms, values))

    def log_values(self) -> dict[str, float]:
        """{"loss/<term>": L_i, "weight/<term>": multiplier} from the last call, in one sync."""
        if not self.last_terms:
            return {}
        device = next(iter(self.last_terms.values())).device
        tensors = [*self.last_terms.values(), *self.current_weights().values()]
        values = torch.stack([t.to(device) for t in tensors]).tolist()
        keys = [f"loss/{n}" for n in self.terms] + [f"weight/{n}" for n in self.terms]
        return dict(zip(keys, values))
