"""`fit(shard=True)`: parameters, gradients and optimizer state sharded over the ranks with
FSDP2 (`torch.distributed.fsdp.fully_shard`), for a model too large for one device.

What changes against DDP, and why (docs/scaling.md, "FSDP"):

- every module that owns parameters is sharded, then the root, unless the user's model
  already holds `fully_shard`ed modules: then their choice of units stands and only the root
  is added. Each unit's parameters are gathered just for its forward and backward;
- checkpoints keep `fit`'s pickle-free safetensors format, written from the full state
  gathered into rank 0's host memory (`get_model_state_dict(full_state_dict=True,
  cpu_offload=True)`), so resume, rollback, the best weights and model.safetensors are the
  files of an unsharded run: a sharded run resumes on one process and back.
  (torch.distributed.checkpoint's own format pickles its .metadata file; we do not use it.)
- the optimizer state is moved between the two key schemes here: `fit` saves it by parameter
  index (optimizer.state_dict()), the full-state API keys it by parameter name.

Every function here is a collective: all ranks call it together, as the loop does.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from endtoend.train import distributed

_FULL = dict(full_state_dict=True, cpu_offload=True)           # gathered into rank 0's host memory
_FROM_RANK0 = dict(full_state_dict=True, broadcast_from_rank0=True)  # rank 0's copy sent to every rank


def shard(network: nn.Module, device: torch.device) -> nn.Module:
    """Shard `network` in place over every rank (one FSDP unit per module owning parameters,
    then the root) and return it; its parameters become DTensors on `device`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    if not any(isinstance(module, FSDPModule) for module in network.modules()):
        for module in list(network.modules())[1:]:
            if any(True for _ in module.parameters(recurse=False)):
                fully_shard(module, mesh=mesh)
    if not isinstance(network, FSDPModule):
        fully_shard(network, mesh=mesh)
    return network


def is_sharded(network: nn.Module) -> bool:
    return "torch.distributed.fsdp" in sys.modules and isinstance(network, _fsdp_module())


def _fsdp_module() -> type:
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def unsharded_class(module: nn.Module) -> type:
    """The module's own class: fully_shard swaps it for a subclass named FSDP<Class>, which
    must not make a run's identity differ between a sharded and an unsharded process."""
    cls = type(module)
    if is_sharded(module):
        cls = next(base for base in cls.__bases__ if not issubclass(base, _fsdp_module()))
    return cls


def model_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state_dict as plain host tensors on rank 0 ({} on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(network, options=StateDictOptions(**_FULL))


def load_model_state(network: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load rank 0's full `state` into every rank's shards (the other ranks' `state` is unread)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(network, state if dist.get_rank() == 0 else {}, options=StateDictOptions(**_FROM_RANK0))


def optimizer_state(network: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() of the unsharded model (state keyed by parameter index) on rank 0;
    {"state": {}, "param_groups": []} on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not optimizer.state:
        # Before the first step: say so without the full-state call, which would first create
        # the state by an optimizer step on zero gradients (Adam's step count would be off by one).
        return optimizer.state_dict()
    by_name = get_optimizer_state_dict(network, optimizer, options=StateDictOptions(**_FULL))
    if dist.get_rank() != 0:
        return {"state": {}, "param_groups": []}
    index = {name: i for i, name in enumerate(_names_in_order(network, optimizer))}
    groups = [dict(group, params=[index[name] for name in group["params"]]) for group in by_name["param_groups"]]
    return {"state": {index[name]: value for name, value in by_name["state"].items()}, "param_groups": groups}


def load_optimizer_state(network: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an index-keyed optimizer.state_dict() held by rank 0 into every rank's shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # No step taken yet (rank 0 decides; its copy is the full one): every rank then holds the
    # same plain state_dict of groups alone, loaded as is; the full-state call would first
    # create the state by a step on zero gradients.
    if distributed.from_rank0(not state["state"]):
        optimizer.load_state_dict(state)
        return
    by_name: dict[str, Any] = {}
    if dist.get_rank() == 0:
        names = _names_in_order(network, optimizer)
        by_name = {"state": {names[i]: value for i, value in state["state"].items()},
                   "param_groups": [dict(group, params=[names[i] for i in group["params"]])
                                    for group in state["param_groups"]]}
    set_optimizer_state_dict(network, optimizer, by_name, options=StateDictOptions(**_FROM_RANK0))


def _names_in_order(network: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The qualified name of each optimizer parameter, in optimizer.state_dict()'s index order."""
    names = {id(parameter): name for name, parameter in network.named_parameters()}
    return [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]
