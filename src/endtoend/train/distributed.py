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
- evaluation is split: each rank runs the model on its rows of every batch and the outputs
  are all-gathered back (train/evaluate.py), so any metric, even a user's corpus metric that
  cannot be summed across ranks, sees the whole split, as in one process.

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
    return batch if size == 1 else rows_of(batch, rank, size, equal=True)


def rows_of(batch: Any, rank: int, size: int, *, equal: bool = False) -> Any:
    """This rank's rows[rank::size] of a batch: tensors, and tuples, lists, dicts of them.
    `equal` (training) refuses a batch whose rows do not divide among the ranks; evaluation
    takes any length (the last batch of a split rarely divides)."""
    if isinstance(batch, torch.Tensor):
        if equal and (batch.dim() == 0 or batch.shape[0] % size):
            raise UsageError(f"a batch of {batch.shape[0] if batch.dim() else 'no'} rows does not divide among "
                             f"{size} processes; give the DataLoader a batch_size that is a multiple of {size} "
                             "and drop_last=True")
        return batch[rank::size]
    if isinstance(batch, Mapping):
        return type(batch)({key: rows_of(value, rank, size, equal=equal) for key, value in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(rows_of(value, rank, size, equal=equal) for value in batch)
    raise UsageError(f"cannot split a batch of {type(batch).__name__} among processes; yield tensors "
                     "(or tuples, lists, dicts of them)")


def tensors_in(batch: Any) -> list[torch.Tensor] | None:
    """Every tensor of a batch or a model's outputs (a tensor, or tuples, lists, dicts of them),
    in order; None when anything else is in it, or nothing is."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else None
    found = [tensors_in(value) for value in values] if values is not None else []
    if not found or any(part is None for part in found):
        return None
    return [tensor for part in found for tensor in part]


def join_rows(part: Any, total: int, size: int) -> Any:
    """The inverse of `rows_of` on every rank: the whole batch of `total` rows from each rank's
    rows (all-gathered, padded to the longest share, put back in their interleaved order)."""
    if isinstance(part, Mapping):
        return type(part)({key: join_rows(value, total, size) for key, value in part.items()})
    if isinstance(part, (list, tuple)):
        return type(part)(join_rows(value, total, size) for value in part)
    longest = -(-total // size)
    padded = torch.cat([part, part.new_zeros((longest - part.shape[0], *part.shape[1:]))]) if part.shape[0] < longest else part
    shares = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(shares, padded.contiguous())
    whole = part.new_empty((total, *part.shape[1:]))
    for rank, share in enumerate(shares):
        whole[rank::size] = share[:len(range(rank, total, size))]
    return whole


def same_buffers(network: nn.Module, size: int) -> None:
    """Rank 0's buffers (batch-norm statistics) on every rank. Each rank's last training
    forward updated its own from its own rows; evaluation, which joins the ranks' outputs,
    must use one model's, the one rank 0 saves."""
    if size == 1:
        return
    for buffer in network.buffers():
        dist.broadcast(buffer.data, src=0)


def mean_over_ranks(value: torch.Tensor, size: int) -> torch.Tensor:
    """`value` averaged over the ranks (a new tensor; `value` itself without several processes)."""
    if size == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / size


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


def from_rank0(value: Any) -> Any:
    """Rank 0's `value` on every rank (a decision only rank 0 can make, on what only it holds)."""
    values = [value]
    dist.broadcast_object_list(values, src=0)
    return values[0]


def barrier(size: int) -> None:
    if size > 1:
        dist.barrier()
