"""The run directory: everything one training run leaves behind.

    config.json      every argument, resolved
    metrics.jsonl    one JSON object per logged value: step, epoch, split, name, value, time
    tb/              TensorBoard event files (the same values)
    checkpoints/     see endtoend.train.checkpoint
    model.safetensors  the final weights of the user's model (no transforms), written before summary.json
    summary.json     final metrics, weights_sha256 and "model_file"
    report.html      curves and the final metrics table (endtoend.report)

Only the main process (rank 0) writes; the other ranks get a writer whose methods do
nothing, so the loop never branches on the rank when it logs.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from endtoend.errors import UsageError


def write_json_atomically(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write `data` as JSON to `path` through a temporary file and a rename: a kill leaves
    the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=str))
    os.replace(tmp, path)


RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints")


def check_output_folder(out: Path, resume: bool) -> None:
    """Refuse, before anything is trained or written, an output path that cannot be used:
    under a file, unwritable, an existing non-empty folder (unless resuming), or, when
    resuming, a non-empty folder that is not a run directory."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a folder; choose another --out")
    check_writable(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    is_run = any((out / name).exists() for name in RUN_FILES)
    if not resume:
        advice = " or pass --resume (resume=True) to continue that run" if (out / "checkpoints").exists() else ""
        raise UsageError(f"output folder {out} already exists and is not empty; choose another --out{advice} "
                         "(nothing was overwritten)")
    if not is_run:
        raise UsageError(f"cannot resume in {out}: it is not a run directory (no config.json, metrics.jsonl or "
                         "checkpoints/); check the path or choose another --out (nothing was touched)")
    if (out / "checkpoints").exists() and not (out / "checkpoints").is_dir():
        raise UsageError(f"cannot resume in {out}: {out / 'checkpoints'} is a file, not the checkpoints folder; "
                         "move it away (nothing was touched)")


def check_writable(out: Path) -> None:
    """Check, creating nothing, that `out` can be created and written: the nearest existing
    folder on its path must be a folder we can write in. A probe file (unnamed, gone when
    closed) is the only test that holds for root, ACLs and read-only mounts alike."""
    existing = out
    try:
        existing = next(path for path in (out, *out.parents) if path.exists())
        if not existing.is_dir():
            where = "exists and is a file" if existing == out else f"cannot be created: {existing} is a file"
            raise UsageError(f"output folder {out} {where}; choose another --out")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        where = "" if existing == out else f" ({existing}, where it would be created)"
        raise UsageError(f"cannot write in the output folder {out}{where}: {error.strerror or error}; "
                         "choose another --out") from None


def start_anew(out: Path, warn) -> None:
    """resume=True found no checkpoint: start the run anew, with one warning line. That is
    right after a kill before the first checkpoint, but would rewrite the record of a run that
    finished (summary.json) and whose checkpoints were deleted since: that is refused."""
    if (out / "summary.json").exists():
        raise UsageError(f"cannot resume in {out}: it holds a finished run (summary.json) but no checkpoint to "
                         "continue from; choose another --out (nothing was touched)")
    warn(f"no checkpoint under {out}: starting a new run")  # a warning: shown even with progress=False


def create_output_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output folder {out}: {err.strerror or err}; choose another --out") from None


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
            write_json_atomically(self.folder / name, data)

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
