"""Progress output with rich: a bar with epoch, step, loss, throughput and ETA.

Quiet when `enabled` is False (progress=False, not a terminal, or not rank 0). Warnings
always reach stderr, in one line each.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainingProgress:
    def __init__(self, enabled: bool, total_steps: int):
        self.console = Console(stderr=True)
        self.requested = enabled                            # notes: whenever progress output is on
        self.enabled = enabled and self.console.is_terminal  # the live bar: only on a terminal
        self.total_steps = total_steps
        self._progress: Progress | None = None
        self._task = None
        self._last = (time.time(), 0)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        if self.requested:
            self.console.print(message, soft_wrap=True, markup=False, highlight=False)  # one line, as written

    def show(self, renderable: Any) -> None:
        """Print something (e.g. an audit report) whether or not the bar is shown."""
        Console(stderr=True).print(renderable)

    def start(self, completed: int) -> None:
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.total_steps, completed=completed,
                                             epoch="-", loss="-", speed="")
        self._last = (time.time(), completed)

    def update(self, step: int, epoch: int, epochs: int, loss: float) -> None:
        if self._progress is None:
            return
        now = time.time()
        then, then_step = self._last
        speed = f"{(step - then_step) / max(now - then, 1e-9):.1f} step/s"
        self._last = (now, step)
        self._progress.update(self._task, completed=step, epoch=f"{epoch + 1}/{epochs}",
                              loss=f"{loss:.4f}", speed=speed)

    def epoch_done(self, record: dict[str, Any]) -> None:
        if self._progress is not None:
            shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
            self._progress.console.print(shown)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
