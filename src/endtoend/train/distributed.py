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


class RankRows(torch.utils.data.Sampler):
    """A batch sampler that yields this rank's indices[rank::size] of each global batch the
    user's batch sampler draws: a DistributedSampler for global batches. Every rank draws the
    same global batches (the shuffle comes from the shared seed, through the same RNG calls a
    one-process loader makes), so the ranks' shares together are the one-process batch, and
    each rank loads only its own rows."""

    def __init__(self, batches: Any, rank: int, size: int) -> None:
        self.batches, self.rank, self.size = batches, rank, size

    def __iter__(self):
        for indices in self.batches:
            indices = list(indices)
            if len(indices) % self.size:
                raise UsageError(_undivided(len(indices), self.size))
            yield indices[self.rank::self.size]

    def __len__(self) -> int:
        return len(self.batches)


def _undivided(rows: int | str, size: int) -> str:
    return (f"a batch of {rows} rows does not divide among {size} processes; give the DataLoader a "
            f"batch_size that is a multiple of {size} and drop_last=True")


def rank_loader(data: Any, rank: int, size: int) -> Any:
    """The training DataLoader this rank iterates: the user's, rebuilt around `RankRows` so the
    rank reads only its share of every global batch. Anything else (an iterable-style dataset,
    a DataLoader subclass, a plain iterable of batches) is returned as it is, and `share` splits
    each batch after every rank has read it whole."""
    if size == 1 or type(data) is not torch.utils.data.DataLoader or data.batch_sampler is None:
        return data
    if isinstance(data.dataset, torch.utils.data.IterableDataset):
        return data
    batches = data.batch_sampler
    if isinstance(getattr(batches, "sampler", None), torch.utils.data.DistributedSampler):
        raise UsageError("the train DataLoader has a DistributedSampler, but fit shares every global batch among "
                         "the processes itself; pass the DataLoader you would use in one process (shuffle=True, "
                         "batch_size = the global batch)")
    if isinstance(batches, torch.utils.data.BatchSampler):  # say it before training, not at the last batch
        last = 0 if batches.drop_last else len(batches.sampler) % batches.batch_size
        for rows in {batches.batch_size, last} - {0}:
            if rows % size:
                raise UsageError(_undivided(rows, size))
    options = {name: getattr(data, name) for name in (
        "num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn", "multiprocessing_context",
        "generator", "persistent_workers", "pin_memory_device", "in_order") if hasattr(data, name)}
    if data.num_workers:
        options["prefetch_factor"] = data.prefetch_factor
    return torch.utils.data.DataLoader(data.dataset, batch_sampler=RankRows(batches, rank, size), **options)


def share(batch: Any, rank: int, size: int) -> Any:
    """This rank's rows of a global batch from an iterable `rank_loader` could not rebuild:
    every rank's iterable yields the same batches, so rows[rank::size] of each is exact."""
    return batch if size == 1 else rows_of(batch, rank, size, equal=True)


def is_rank_loader(data: Any) -> bool:
    return isinstance(getattr(data, "batch_sampler", None), RankRows)


def rows_of(batch: Any, rank: int, size: int, *, equal: bool = False) -> Any:
    """This rank's rows[rank::size] of a batch: tensors, and tuples, lists, dicts of them.
    `equal` (training) refuses a batch whose rows do not divide among the ranks; evaluation
    takes any length (the last batch of a split rarely divides)."""
    if isinstance(batch, torch.Tensor):
        if equal and (batch.dim() == 0 or batch.shape[0] % size):
            raise UsageError(_undivided(batch.shape[0] if batch.dim() else "no", size))
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
