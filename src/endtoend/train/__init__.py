"""The training loop, checkpoints, schedules and run directory."""

from endtoend.train.checkpoint import weights_sha256
from endtoend.train.loop import Run, fit

__all__ = ["Run", "fit", "weights_sha256"]
