"""Turning what the user passes as `train`/`val`/`test` into batches on the device.

Two paths:

- **tensors** `(inputs, targets)`: moved to the device once, batched by indexing a
  permutation that is a pure function of (seed, epoch). No DataLoader, no per-sample
  Python; the sampler position is just (epoch, batch index), so resume is exact.
- **any iterable of (inputs, targets) batches** (a DataLoader) for data that does not fit
  in memory; each batch is moved to the device as it arrives.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from endtoend.errors import UsageError
from endtoend.train import distributed


@dataclass
class TensorData:
    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]


def _to_tensor(value: Any, split: str, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    try:
        return torch.as_tensor(array)
    except (TypeError, RuntimeError):
        raise UsageError(f"{split} {name} are numpy {array.dtype} values, which cannot become a tensor; "
                         "encode them as numbers first (labels: e.g. sklearn.preprocessing.LabelEncoder)") from None


def as_data(data: Any, split: str, device: torch.device) -> TensorData | Any:
    """Validate one split; tensors (or numpy arrays) go to the device once."""
    if data is None:
        return None
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        inputs, targets = _to_tensor(data[0], split, "inputs"), _to_tensor(data[1], split, "targets")
        if inputs.shape[0] != targets.shape[0]:
            raise UsageError(
                f"{split} data: inputs have {inputs.shape[0]} rows but targets have "
                f"{targets.shape[0]}; pass (inputs, targets) with one target per input"
            )
        for name, tensor in (("inputs", inputs), ("targets", targets)):
            if tensor.is_floating_point():
                bad = (~torch.isfinite(tensor)).sum().item()
                if bad:
                    raise UsageError(
                        f"{split} {name} hold {bad} non-finite values (NaN or Inf); "
                        "clean or impute them before training"
                    )
        return TensorData(inputs.to(device), targets.to(device))
    if isinstance(data, (torch.Tensor, np.ndarray)) or (isinstance(data, (tuple, list)) and len(data) == 1):
        raise UsageError(f"{split} data is a single {type(data).__name__}: pass (inputs, targets), the inputs "
                         "and their targets as a pair")
    if hasattr(data, "__iter__"):
        return data
    raise UsageError(
        f"{split} data must be (inputs, targets) tensors or an iterable of batches, "
        f"got {type(data).__name__}"
    )


def fingerprint(data: TensorData | Any) -> str | None:
    """A cheap identity of a split for resume checks: shapes, dtypes and a hash of the content
    (every byte up to 16 MB a tensor, else 1M evenly spaced elements). An iterable of
    batches is identified by its type and length only (reading it would consume it)."""
    if data is None:
        return None
    if not isinstance(data, TensorData):
        return f"{type(data).__name__}(len={len(data) if hasattr(data, '__len__') else '?'})"
    digest = hashlib.sha256()
    described = []
    for tensor in (data.inputs, data.targets):
        flat = tensor.detach().reshape(-1)
        if flat.numel() * flat.element_size() > 16 << 20:
            # Integer arithmetic: a float32 linspace cannot name every index past 2**24 elements
            # (the last one rounded up, out of bounds).
            picks = 1 << 20
            flat = flat[torch.arange(picks, device=flat.device) * (flat.numel() - 1) // (picks - 1)]
        digest.update(flat.to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        described.append(f"{tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')}")
    return f"{' -> '.join(described)} sha256:{digest.hexdigest()[:16]}"


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The order of epoch `epoch`: a function of (seed, epoch) alone, never of global RNG."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)  # any 64-bit seed
    return torch.randperm(n, generator=generator).to(device)


def steps_per_epoch(data: TensorData | Any, batch_size: int, world_size: int = 1) -> int:
    """Training steps in one epoch (tensor path drops the last partial batch)."""
    if isinstance(data, TensorData):
        return max(len(data) // batch_size, 1)
    if hasattr(data, "__len__"):
        return len(data)
    raise UsageError(
        "the training iterable has no len(); pass a DataLoader (or anything with __len__) "
        "so the schedule knows the number of steps"
    )


def train_batches(
    data: TensorData | Any, batch_size: int, seed: int, epoch: int, start: int,
    device: torch.device, rank: int = 0, world_size: int = 1, pool: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches of `epoch` from batch index `start` on.

    `pool` (a curriculum) restricts the epoch to those rows, shuffled and repeated so the
    epoch keeps its number of steps. Under torchrun every rank walks the same global
    permutation and takes its own interleaved share of each global batch, so the sampler
    position is rank-independent.
    """
    if isinstance(data, TensorData):
        n = len(data)
        size = min(batch_size, n)
        if pool is None:
            order = epoch_permutation(n, seed, epoch, device)
        else:
            pool = pool.to(device)
            shuffled = pool[epoch_permutation(len(pool), seed, epoch, device)]
            order = shuffled.repeat(-(-n // len(pool)))[:n]
        for index in range(start, steps_per_epoch(data, batch_size)):
            rows = order[index * size:(index + 1) * size]
            if world_size > 1:
                rows = rows[rank::world_size]
            yield data.inputs[rows], data.targets[rows]
        return
    shared = distributed.is_rank_loader(data)  # each rank loads its own rows already
    for index, batch in enumerate(data):
        if index < start:
            continue
        yield move_batch(batch if shared else distributed.share(batch, rank, world_size), device)


def move_batch(batch: Any, device: torch.device) -> tuple[Any, Any]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise UsageError(f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}")
    inputs, targets = batch
    return (inputs.to(device, non_blocking=True) if isinstance(inputs, torch.Tensor) else inputs,
            targets.to(device, non_blocking=True) if isinstance(targets, torch.Tensor) else targets)


def to_device(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """`value` with every tensor on `device` (numpy arrays made tensors), recursively through
    dicts (their own type kept when it can be rebuilt, such as a BatchEncoding), namedtuples,
    lists and tuples; floating-point tensors in `dtype` when given (a model's: fit converts its
    data the same way, so a float64 array predicts as it trained)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype=dtype if dtype is not None and value.is_floating_point() else None)
    if isinstance(value, Mapping):
        moved = {k: to_device(v, device, dtype) for k, v in value.items()}
        with contextlib.suppress(Exception):
            return type(value)(moved)
        return moved
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(to_device(v, device, dtype) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device, dtype) for v in value)
    return value


def eval_batches(data: TensorData | Any, batch_size: int, device: torch.device):
    if isinstance(data, TensorData):
        for start in range(0, len(data), batch_size):
            yield data.inputs[start:start + batch_size], data.targets[start:start + batch_size]
        return
    for batch in data:
        yield move_batch(batch, device)
