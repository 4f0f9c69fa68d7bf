"""The differentiability audit as a Lightning callback (`lightning.pytorch`, Lightning 2.x).

```python
import lightning as L
from endtoend.integrations.lightning import AuditCallback

trainer = L.Trainer(callbacks=[AuditCallback(mode="warn")])   # or mode="error"
trainer.fit(module, train_loader)
```

On the first training batch (batch 0 of epoch 0, once per fit) the callback audits the
LightningModule with that batch, already on the module's device, using the module's own
`training_step(batch, 0)` as the objective: a cut is found in the loss the module really
trains on, wherever in `training_step` (or in what it calls) it is computed. `training_step`
may return the loss tensor or a dict with "loss". The findings table is printed once, on the
global-zero rank; the counts go to every logger of the trainer (`audit/errors`,
`audit/warnings`, `audit/parameters_without_gradient`, at step 0); `callback.report` holds
the `AuditReport`. With `mode="error"` a report that is not ok stops the fit with one line
naming the first finding's file and line (`AuditError`, raised through `trainer.fit`).

Training is left bit-identical: the audit restores the module's parameters, buffers
(BatchNorm running statistics), `.grad`, requires_grad flags, train/eval modes and the RNG
(endtoend/audit/preserve.py); this callback also puts back what `training_step` may change
outside them (see `_kept_python_state`) and silences `self.log` for the audit's call.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

from endtoend.audit import AuditReport, audit
from endtoend.errors import UsageError
from endtoend.integrations._common import (
    AuditError,
    check_mode,
    error_message,
    require,
    show,
    summary_metrics,
)

require("lightning.pytorch", "lightning")
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402

__all__ = ["AuditCallback", "AuditError", "audit_training_step"]


class AuditCallback(Callback):
    """Audit the LightningModule's `training_step` on the first training batch.

    `mode="warn"` prints the findings and trains on; `mode="error"` stops the fit when the
    report is not ok, with an `AuditError` naming the first finding's file and line.
    """

    def __init__(self, mode: str = "warn") -> None:
        super().__init__()
        self.mode = check_mode(mode, "AuditCallback")
        self.report: AuditReport | None = None
        self._pending = True

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = True  # once per fit

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self._pending or batch_idx != 0 or trainer.current_epoch != 0:
            return  # a fit resumed past its first batch is not audited
        self._pending = False
        if not pl_module.automatic_optimization:
            # training_step would step the optimizers itself, which the audit cannot undo.
            message = ("AuditCallback: the module uses manual optimization (automatic_optimization=False), "
                       "whose training_step steps the optimizers; audit it with endtoend.audit(model, inputs, "
                       "loss_fn=...) instead")
            if self.mode == "error":
                raise UsageError(message)
            if trainer.is_global_zero:
                print(f"{message}; not audited", flush=True)
            return
        self.report = audit_training_step(pl_module, batch, batch_idx, trainer)
        if trainer.is_global_zero:
            show(self.report)
        metrics = summary_metrics(self.report)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.mode == "error" and not self.report.ok:
            raise AuditError(error_message(self.report, "AuditCallback"))


def audit_training_step(module: LightningModule, batch: Any, batch_idx: int = 0,
                        trainer: Trainer | None = None) -> AuditReport:
    """`endtoend.audit` of `module` with `module.training_step(batch, batch_idx)` as the
    objective; the module, the RNG and the attributes `training_step` changes are left as
    found. Under the trainer's precision context when a trainer is given."""
    precision = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    context = precision.train_step_context if precision is not None else contextlib.nullcontext

    def step() -> Any:
        with context():
            output = module.training_step(batch, batch_idx)
        if output is None:
            raise UsageError(f"AuditCallback: training_step returned None for batch {batch_idx} (Lightning skips "
                             "such a batch), so there is no loss to audit; return the loss")
        return output

    with _kept_python_state(module), _logging_off(module), _step_as_forward(module, step):
        # The audit calls module(), which now runs the training step; the raw output is
        # kept as the model's output so that the audit's probes see every tensor it returns.
        return audit(module, (), loss_fn=_step_loss)


def _step_loss(output: Any) -> Any:
    """The loss of a training_step's output: the tensor itself, or the dict's "loss"."""
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise UsageError(f"AuditCallback: training_step returned a dict without 'loss' (keys: "
                             f"{', '.join(map(str, output))}); Lightning trains on output['loss']")
        return output["loss"]
    return output


@contextlib.contextmanager
def _step_as_forward(module: nn.Module, step: Callable[[], Any]) -> Iterator[None]:
    """Make `module()` run `step()`; calls made inside it (`self(x)`, `self.forward(x)` in
    training_step) reach the module's real forward. The audit calls the model it is given;
    passing the module itself (not a wrapper) keeps the parameter and module names the user
    knows and lets the audit find where each attribute is assigned."""
    had_own = "forward" in module.__dict__
    own = module.__dict__.get("forward")
    real_forward = module.forward
    depth = 0

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal depth
        if depth:
            return real_forward(*args, **kwargs)
        depth += 1
        try:
            return step()
        finally:
            depth -= 1

    object.__setattr__(module, "forward", forward)
    try:
        yield
    finally:
        if had_own:
            object.__setattr__(module, "forward", own)
        else:
            del module.__dict__["forward"]


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def _logging_off(module: LightningModule) -> Iterator[None]:
    """`self.log` and `self.log_dict` do nothing during the audit's calls of training_step.

    Why: those calls run inside this callback's `on_train_batch_start`, not in Lightning's
    training step, and maybe more than once (the audit runs the step again to probe a zero
    gradient). What they logged would enter Lightning's results under that hook's name, beside
    the real step's values (Lightning 2.6 happens to keep the real step's value for step 0, but
    that is its bookkeeping, not a promise), `sync_dist=True` would all-reduce across processes
    from inside a callback, and a metric object passed to `self.log` would be registered under
    the hook; and `audit_training_step` called outside a fit would get Lightning's warning (no
    trainer) or its MisconfigurationException (a trainer, outside its control flow). The audit needs the loss, not the logs, so instance
    attributes shadow both methods for the audit's calls only.
    """
    saved = {name: module.__dict__[name] for name in ("log", "log_dict") if name in module.__dict__}
    for name in ("log", "log_dict"):
        object.__setattr__(module, name, _no_log)
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            if name in saved:
                object.__setattr__(module, name, saved[name])
            else:
                del module.__dict__[name]


@contextlib.contextmanager
def _kept_python_state(module: LightningModule) -> Iterator[None]:
    """Put back what a training_step changes besides parameters and buffers (those the audit
    restores): the LightningModule's public attributes (Lightning 2's documented
    `self.training_step_outputs.append(loss)` included: lists, dicts and sets get their items
    back in place, rebound attributes their old value, new ones are removed) and the state of
    every torchmetrics metric in it (an `update` of the audit's batch would count in the epoch's
    value)."""
    attributes = {k: v for k, v in vars(module).items() if not k.startswith("_")}
    contents = {k: copy.copy(v) for k, v in attributes.items() if isinstance(v, (list, dict, set))}
    metrics = [(m, _metric_state(m)) for m in module.modules() if _is_metric(m)]
    try:
        yield
    finally:
        for key in [k for k in vars(module) if not k.startswith("_") and k not in attributes]:
            del module.__dict__[key]
        for key, value in attributes.items():
            module.__dict__[key] = value
            if key in contents:  # in place: whoever else holds the list sees it restored
                value.clear()
                if isinstance(value, list):
                    value.extend(contents[key])
                else:
                    value.update(contents[key])
        for metric, state in metrics:
            for name, value in state.items():
                setattr(metric, name, value)


def _is_metric(module: nn.Module) -> bool:
    """A torchmetrics Metric (duck-typed: its state names and their reductions)."""
    return isinstance(getattr(module, "_defaults", None), dict) and isinstance(getattr(module, "_reductions", None), dict)


def _metric_state(metric: nn.Module) -> dict[str, Any]:
    state = {}
    for name in metric._defaults:
        value = getattr(metric, name)
        state[name] = value.detach().clone() if hasattr(value, "detach") else copy.copy(value)
    for name in ("_update_count", "_computed", "_forward_cache"):
        if name in vars(metric):
            state[name] = vars(metric)[name]
    return state
