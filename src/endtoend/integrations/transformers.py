"""The differentiability audit as a Hugging Face `Trainer` callback (`transformers`).

```python
from transformers import Trainer
from endtoend.integrations.transformers import AuditCallback

trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[AuditCallback(mode="warn")])
trainer.train()
```

Before the first step (`on_train_begin`, at global step 0: a run resumed from a checkpoint is
not audited) the callback takes one batch from the Trainer's own train dataloader (its
collator included), moves it to the model's device, and audits the model in train mode with
the model's own loss, as the Trainer computes it: `model(**batch)`, then `outputs.loss` /
`outputs["loss"]` (a `PreTrainedModel`'s `ModelOutput`, or a plain `nn.Module` returning a
dict), or the first element of a tuple. The findings table is printed on the main process
only, the counts are appended to `state.log_history` (`audit/errors`, `audit/warnings`,
`audit/parameters_without_gradient`, at step 0), and `callback.report` holds the
`AuditReport`. With `mode="error"` a report that is not ok stops `trainer.train()` with one
line naming the first finding's file and line (`AuditError`).

Training is left bit-identical: the audit restores the model's parameters, buffers, `.grad`,
requires_grad flags, train/eval modes and torch's RNG (endtoend/audit/preserve.py); taking
the batch leaves Python's, NumPy's and torch's RNG and the dataloader's generators as they
were, so the Trainer then draws the same shuffle, and reads the plain DataLoader under
Accelerate's wrapper, so that wrapper's iteration count and gradient-accumulation state do not
move.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from endtoend.audit import AuditReport, audit
from endtoend.errors import UsageError
from endtoend.integrations._common import (
    AuditError,
    check_mode,
    error_message,
    kept_modes,
    kept_rng,
    model_device,
    require,
    show,
    summary_metrics,
)
from endtoend.train.data import to_device

require("transformers", "transformers")
from transformers import TrainerCallback  # noqa: E402

__all__ = ["AuditCallback", "AuditError"]


class AuditCallback(TrainerCallback):
    """Audit the model's own loss on the first batch of the Trainer's train dataloader.

    `mode="warn"` prints the findings and trains on; `mode="error"` stops `trainer.train()`
    when the report is not ok, with an `AuditError` naming the first finding's file and line.
    """

    def __init__(self, mode: str = "warn") -> None:
        self.mode = check_mode(mode, "AuditCallback")
        self.report: AuditReport | None = None

    def on_train_begin(self, args, state, control, model: nn.Module | None = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if state.global_step != 0:
            return  # resumed from a checkpoint: the model is no longer the one to audit first
        if model is None or train_dataloader is None:
            raise UsageError("AuditCallback: the Trainer passed no model or train dataloader to on_train_begin; "
                             "this transformers version is not supported (tested with 5.x)")
        self.report = audit_first_batch(model, train_dataloader)
        if state.is_world_process_zero:
            show(self.report)
        state.log_history.append({**summary_metrics(self.report), "step": state.global_step})
        if self.mode == "error" and not self.report.ok:
            raise AuditError(error_message(self.report, "AuditCallback"))


def audit_first_batch(model: nn.Module, train_dataloader: Any) -> AuditReport:
    """`endtoend.audit` of `model` in train mode on the first batch of `train_dataloader`,
    with the model's own loss as the objective; the model, the RNGs and the loader are left as
    found."""
    batch = to_device(first_batch(train_dataloader), model_device(model))
    with kept_modes(model):
        model.train()  # as the Trainer's training_step runs it (from_pretrained leaves eval mode)
        return audit(model, batch, loss_fn=model_loss)


def first_batch(train_dataloader: Any) -> Any:
    """One batch of the loader, drawn without moving any RNG or the loader's own state."""
    # Accelerate wraps the DataLoader; iterating the wrapper would count an epoch begun and
    # never ended (its gradient-accumulation state) and synchronise RNGs across processes.
    base = getattr(train_dataloader, "base_dataloader", train_dataloader)
    with kept_rng(train_dataloader, base):
        iterator = torch.utils.data.DataLoader.__iter__(base) if isinstance(base, torch.utils.data.DataLoader) \
            else iter(base)
        try:
            return next(iterator)
        except StopIteration:
            raise UsageError("AuditCallback: the train dataloader yields no batch; pass a train_dataset with "
                             "at least one row") from None
        finally:
            del iterator  # a worker pool of its own shuts down here


def model_loss(output: Any) -> Any:
    """The loss the Trainer trains on: `outputs["loss"]` of a dict or ModelOutput, the first
    element of a tuple, or the output itself."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
        if loss is None:
            raise UsageError(
                f"AuditCallback: the model returned no loss for the first batch (keys: "
                f"{', '.join(map(str, output)) or 'none'}); the Trainer trains on outputs['loss']: does the "
                "batch hold the labels?")
        return loss
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output
