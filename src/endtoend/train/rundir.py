"""The run directory: everything one training run leaves behind.

    config.json      every argument, resolved
    metrics.jsonl    one JSON object per logged value: step, epoch, split, name, value, time
    tb/              TensorBoard event files (the same values)
    checkpoints/     see endtoend.train.checkpoint
    summary.json     final metrics and weights_sha256
    report.html      curves and the final metrics table (endtoend.report)

Only the main process (rank 0) writes; the other ranks get a writer whose methods do
nothing, so the loop never branches on the rank when it logs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from endtoend.errors import UsageError


def distributed_rank() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else from torchrun's env."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def prepare_output_folder(out: Path, resume: bool) -> None:
    """Refuse to write into an existing non-empty folder unless resuming."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise UsageError(
            f"output folder {out} already exists and is not empty; pass --resume to continue "
            "that run or choose another --out (nothing was overwritten)"
        )
    out.mkdir(parents=True, exist_ok=True)


class RunWriter:
    """Appends metrics to metrics.jsonl and TensorBoard; writes the JSON files."""

    def __init__(self, folder: Path, enabled: bool = True, tensorboard: bool = True):
        self.folder = folder
        self.enabled = enabled
        self._start = time.time()
        self._metrics = None
        self._tb = None
        if enabled:
            self._metrics = open(folder / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

                self._tb = SummaryWriter(log_dir=str(folder / "tb"))

    def log(self, step: int, epoch: int, split: str, name: str, value: float) -> None:
        if not self.enabled:
            return
        record = {"step": step, "epoch": epoch, "split": split, "name": name,
                  "value": float(value), "time": round(time.time() - self._start, 4)}
        self._metrics.write(json.dumps(record) + "\n")
        if self._tb is not None:
            self._tb.add_scalar(f"{split}/{name}", float(value), step)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        if self.enabled:
            tmp = self.folder / f".{name}.tmp"
            tmp.write_text(json.dumps(data, indent=2, default=str))
            os.replace(tmp, self.folder / name)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._tb is not None:
            self._tb.close()


def truncate_metrics_after(folder: Path, step: int) -> None:
    """Drop metrics.jsonl lines logged after `step` (a resumed run logs them again)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError):
            continue  # a line cut short by the kill
    path.write_text("".join(line + "\n" for line in kept))
