"""The training loop, its settings, checkpoints, schedules and run directory."""

from endtoend.train.checkpoint import weights_sha256
from endtoend.train.loop import Run, fit
from endtoend.train.options import Clipping, Curriculum, Guard, Progressive

__all__ = ["Clipping", "Curriculum", "Guard", "Progressive", "Run", "fit", "weights_sha256"]
