"""Checkpoints that are safe (never pickle), atomic (whole or absent) and exact.

Layout of one checkpoint::

    checkpoints/step-00000420/
        model.safetensors       the model's state_dict
        optimizer.safetensors   the optimizer's per-parameter tensors ("state.<index>.<key>"),
                                plus the EMA and Objective tensors (see train/state.py)
        state.json              step, epoch, RNG states, sampler position, history and the
                                run's identity fields
        manifest.json           the sha256 of each of the three files above, written last

A checkpoint is written into a hidden temporary folder, every file is fsynced, then the
folder is renamed into place (rename is atomic on POSIX), so a kill at any instant leaves
the old checkpoint or the new one, never half of one. Every file is covered by the
manifest, state.json included, so an edited or truncated file makes the checkpoint corrupt
(and the previous one is used). A corrupt folder in the way of a new checkpoint is moved
aside as `step-N.corrupt` (kept for inspection), never silently kept or deleted. Loading
reads safetensors and JSON only; a folder that holds a pickle file is refused and nothing
in it is opened.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from endtoend.errors import UsageError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
CHECKSUMMED = (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
_STEP_FOLDER = re.compile(r"^step-(\d{8})$")


class CorruptCheckpoint(Exception):
    """A checkpoint folder failed verification (missing file, bad checksum, ill-formed state)."""


class UnreadableCheckpoint(Exception):
    """A checkpoint file exists but cannot be opened (permissions): not evidence of corruption."""


@dataclass
class Checkpoint:
    folder: Path
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    state: dict[str, Any]


def step_folder_name(step: int) -> str:
    return f"step-{step:08d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the state_dict's tensors sorted by name (name, dtype, shape, raw bytes).

    Two models with bit-identical weights give the same hash on any device.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage (tied weights), so every entry is
    # written from its own contiguous CPU copy.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_model_file(folder: Path, weights: dict[str, torch.Tensor]) -> Path:
    """A finished run's final weights as folder/model.safetensors (the user's model, not the
    transforms wrapper), for `e2e predict`: written under a temporary name, synced, then
    renamed, so the file is whole or absent."""
    path, tmp = folder / MODEL_FILE, folder / f".{MODEL_FILE}.tmp"
    try:
        save_file(cpu_copies(weights), str(tmp))
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UsageError(f"could not write {path} ({type(err).__name__}: {err}); free space or fix permissions, "
                             "then resume (the checkpoints are intact)") from None
        raise
    return path


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    check: Callable[[Checkpoint], None] = lambda existing: None,
) -> Path:
    """Write checkpoint `step` under `root` atomically and return its folder.

    When a folder for `step` already exists (the same step saved again after a rollback or a
    resume), the new checkpoint replaces it; an old folder that fails verification (or
    `check`, which knows the state's fields) is moved aside as `step-N.corrupt` first, so it
    stays on disk for inspection. A failed write removes its temporary folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_folder_name(step)
    tmp = root / f".tmp-{step_folder_name(step)}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(cpu_copies(model_state), str(tmp / MODEL_FILE))
        save_file(cpu_copies(optimizer_tensors), str(tmp / OPTIMIZER_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(dict(state, step=step), indent=1))
        (tmp / MANIFEST_FILE).write_text(json.dumps({name: sha256_file(tmp / name) for name in CHECKSUMMED}))
        for name in (*CHECKSUMMED, MANIFEST_FILE):
            fsync_file(tmp / name)
        fsync_file(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        try:
            check(read_checkpoint(final))
            aside = root / f".replaced-{final.name}-{os.getpid()}"   # intact: replaced, then removed
        except (CorruptCheckpoint, UnreadableCheckpoint, UsageError):
            aside = _free_name(root, f"{final.name}.corrupt")       # kept for inspection
        os.rename(final, aside)
        os.rename(tmp, final)
        if aside.name.startswith(".replaced-"):
            shutil.rmtree(aside)
    else:
        os.rename(tmp, final)
    fsync_file(root)
    return final


def _free_name(root: Path, name: str) -> Path:
    """`root/name`, or `root/name-2`, `-3`, ... when taken."""
    candidate, n = root / name, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{name}-{n}"
    return candidate


def refuse_pickles(folder: Path) -> None:
    """Raise UsageError when `folder` holds a pickle file; nothing is ever unpickled."""
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise UsageError(
                f"checkpoint {folder} holds a pickle file ({path.name}); endtoend never "
                "unpickles (it can run arbitrary code): delete the file or resume from another run"
            )


def read_checkpoint(folder: Path) -> Checkpoint:
    """Verify every file in `folder` against its manifest and load it (safetensors and JSON only).

    Raises CorruptCheckpoint (missing or edited file, bad JSON, truncated tensors) or
    UnreadableCheckpoint (a file that exists but cannot be opened, e.g. permissions).
    """
    refuse_pickles(folder)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        if not isinstance(manifest, dict) or set(manifest) != set(CHECKSUMMED):
            raise CorruptCheckpoint(f"{MANIFEST_FILE} does not list {', '.join(CHECKSUMMED)}")
        for name in CHECKSUMMED:
            if sha256_file(folder / name) != manifest[name]:
                raise CorruptCheckpoint(f"{name} does not match its checksum")
        state = json.loads((folder / STATE_FILE).read_text())
        if not isinstance(state, dict):
            raise CorruptCheckpoint(f"{STATE_FILE} does not hold an object")
        return Checkpoint(
            folder=folder,
            model=load_file(str(folder / MODEL_FILE)),
            optimizer=load_file(str(folder / OPTIMIZER_FILE)),
            state=state,
        )
    except (CorruptCheckpoint, UsageError):
        raise
    except PermissionError as err:
        raise UnreadableCheckpoint(f"{type(err).__name__}: {err}") from err
    except Exception as err:  # OSError, bad JSON, and safetensors' own error type on a truncated file
        raise CorruptCheckpoint(f"{type(err).__name__}: {err}") from err


def list_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoint folders under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_FOLDER.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_FOLDER.match(p.name).group(1)))


def load_latest_checkpoint(root: Path, warn: Callable[[str], None],
                           check: Callable[[Checkpoint], None] = lambda loaded: None) -> Checkpoint | None:
    """The newest checkpoint that verifies (and passes `check`); older ones are tried in turn.

    `check` raises CorruptCheckpoint for a checkpoint whose content is ill-formed (the
    caller knows the state's fields). Each corrupt checkpoint skipped is reported through
    `warn` in one line naming it; nothing is moved or deleted here (a failed resume must
    leave every file as it was). Returns None when `root` holds no checkpoint at all; raises
    UsageError when some exist but none is intact, or when one cannot be read at all.
    """
    folders = list_checkpoints(root)
    if not folders:
        return None
    for folder in reversed(folders):
        try:
            loaded = read_checkpoint(folder)
            check(loaded)
            return loaded
        except UnreadableCheckpoint as err:
            raise UsageError(f"checkpoint {folder} cannot be read ({err}); fix its permissions "
                             "(e.g. chmod -R u+rw) and resume again (nothing was changed)") from None
        except CorruptCheckpoint as err:
            warn(f"checkpoint {folder} is corrupt ({err}); trying the previous one")
    raise UsageError(f"no intact checkpoint under {root}: every one failed its checksum; start a new run")


def prune_checkpoints(root: Path, keep_last: int = 3, keep: set[int] | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints and the steps in `keep` (the best)."""
    folders = list_checkpoints(root)
    protected = {p for p in folders[-keep_last:]} | {
        p for p in folders if int(p.name.split("-")[1]) in (keep or set())
    }
    for folder in folders:
        if folder not in protected:
            shutil.rmtree(folder)


def optimizer_to_tensors(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able groups."""
    tensors: dict[str, torch.Tensor] = {}
    for index, per_param in sd["state"].items():
        for key, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"state.{index}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           groups: list[dict]) -> dict[str, Any]:
    """Inverse of `optimizer_to_tensors`: the state_dict to load into `optimizer`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    current = optimizer.state_dict()["param_groups"]
    restored = []
    for saved, live in zip(groups, current):
        group = dict(saved)
        for k, v in live.items():  # keep tuples as the optimizer expects them
            if isinstance(v, tuple) and k in group:
                group[k] = tuple(group[k])
        restored.append(group)
    return {"state": state, "param_groups": restored}
