"""Several processes, one model: what `fit` does under torchrun (docs/scaling.md).

Under `torchrun --nproc-per-node N` (or `e2e train --nproc N`) every process runs the same
script. `fit` then joins the process group itself (gloo on the CPU, nccl on CUDA, from
torchrun's environment), wraps the network in DistributedDataParallel, and keeps the
semantics of one process:

- `batch_size` is the global batch: each rank takes its interleaved share (rows[rank::N]) of
  the same seeded global batch, so the gradient DDP averages is the one-process gradient;
- only rank 0 writes the run directory and checkpoints; every rank reads a checkpoint on resume;
- the non-finite guard decides on all ranks at once (one all-reduce of a flag), so no rank
  skips or rolls back alone;
- every rank evaluates the whole split (its weights are the same as rank 0's), so any metric,
  even a user's corpus metric that cannot be summed across ranks, is exact without a reduction.

Nothing here is a plugin: the loop calls these functions on visible lines.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from endtoend.errors import UsageError

# A rank that dies leaves the others waiting in a collective: they give up after this long
# with an error instead of hanging (torchrun also stops them when one process fails).
TIMEOUT_S = float(os.environ.get("E2E_DIST_TIMEOUT_S", 300))


def world() -> tuple[int, int]:
    """(rank, world_size): from the process group when there is one, else torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def join(device: torch.device) -> torch.device:
    """Join the process group torchrun set up in the environment (once per process) and return
    this rank's device: with CUDA, the GPU of its local rank."""
    rank, size = world()
    if size == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise UsageError("WORLD_SIZE > 1 but MASTER_ADDR is not set; start the script with torchrun "
                             "(or `e2e train --nproc N`), which sets the rendezvous for every process")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
        atexit.register(_leave)  # we joined it, we leave it: before the interpreter tears down torch
    return device


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, size: int) -> None:
    if size > 1 and batch_size % size:
        raise UsageError(f"batch_size {batch_size} does not divide among {size} processes; batch_size is the "
                         f"global batch (every process takes an equal share): use a multiple of {size}")


def wrap(network: nn.Module, device: torch.device, size: int) -> nn.Module:
    """The module the training step calls: DDP around `network` under several processes (built
    again whenever the trainable parameters change: DDP fixes them at construction)."""
    if size == 1:
        return network
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)


def share(batch: Any, rank: int, size: int) -> Any:
    """This rank's rows of a global batch from a DataLoader: every rank's loader yields the same
    batches (its shuffle comes from the shared seed), so rows[rank::size] of each is exact."""
    if size == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0 or batch.shape[0] % size:
            raise UsageError(f"a batch of {batch.shape[0] if batch.dim() else 'no'} rows does not divide among "
                             f"{size} processes; give the DataLoader a batch_size that is a multiple of {size} "
                             "and drop_last=True")
        return batch[rank::size]
    if isinstance(batch, Mapping):
        return type(batch)({key: share(value, rank, size) for key, value in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(share(value, rank, size) for value in batch)
    raise UsageError(f"cannot split a batch of {type(batch).__name__} among processes; yield tensors "
                     "(or tuples, lists, dicts of them)")


def any_rank(flag: bool, device: torch.device, size: int) -> bool:
    """True on every rank when `flag` is True on any rank."""
    if size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_gradients(parameters, size: int) -> None:
    """Average gradients DDP does not own (an Objective's learned weights) over the ranks."""
    if size == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= size


def gather(value: Any, size: int) -> list[Any]:
    """`value` from every rank, in rank order (a list of one without several processes)."""
    if size == 1:
        return [value]
    values: list[Any] = [None] * size
    dist.all_gather_object(values, value)
    return values


def barrier(size: int) -> None:
    if size > 1:
        dist.barrier()
