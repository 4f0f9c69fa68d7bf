"""The audit inside the trainers people already use (docs/integrations.md).

- `endtoend.integrations.lightning.AuditCallback`: a `lightning.pytorch.Callback` that audits
  the LightningModule's own `training_step` on the first training batch.
- `endtoend.integrations.transformers.AuditCallback`: a `transformers.TrainerCallback` that
  audits the model's own loss on the first batch of the Trainer's train dataloader.

Each module imports its framework when it is imported, and only then: `import endtoend` never
pulls in Lightning or Transformers. Without the framework, the import fails with one line
naming the extra to install (`pip install 'endtoend[lightning]'`). Both callbacks leave the
training bit-identical to a run without them (parameters, buffers, `.grad`, train/eval modes,
requires_grad flags and every RNG restored), and in `mode="error"` stop the fit with one line
naming the first finding's file and line (`AuditError`, a `UsageError`).
"""

from endtoend.integrations._common import AuditError, MissingExtra

__all__ = ["AuditError", "MissingExtra"]
