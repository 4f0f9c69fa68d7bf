"""What the pieces `fit(shard=True)` builds on do under FSDP2 here, on their own (docs/scaling.md, "Sharding").

Run: python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/fsdp_probe.py

Two processes over gloo on the CPU shard a small MLP with `fully_shard` (each Linear, then
the root) and take three AdamW steps through the project's own `all_finite` and
`clip_gradients`; then gather a full state dict (`get_model_state_dict` /
`get_optimizer_state_dict` with full_state_dict and cpu_offload), load it back broadcast from
rank 0, and try `first_non_finite` on the sharded state dict. Rank 0 prints one line per check.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard

from endtoend.train.stability import all_finite, clip_gradients, first_non_finite


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    say = print if rank == 0 else (lambda *_: None)
    say(f"torch {torch.__version__}, {dist.get_world_size()} processes, gloo")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    for layer in net:
        if any(True for _ in layer.parameters()):
            fully_shard(layer)
    fully_shard(net)
    say(f"fully_shard: parameters are {type(next(net.parameters())).__name__}")
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    inputs, targets = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(net(inputs[rank::2]), targets[rank::2])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        finite = all_finite(loss, list(net.parameters()))
        norm = clip_gradients(list(net.parameters()), max_norm=0.1, max_value=None, agc=None)
        opt.step()
    say(f"all_finite on DTensor gradients: {finite}; clip_gradients: pre-clip norm {float(norm):.4f} (same on every rank)")

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_model_state_dict(net, options=full), get_optimizer_state_dict(net, opt, options=full)
    say(f"full model state on rank 0: {sorted(model_state)}, plain tensors: "
        f"{all(type(v) is torch.Tensor for v in model_state.values())}")
    say(f"full optimizer state on rank 0: keyed by name {sorted(optimizer_state.get('state', {}))}")
    others = [None] * dist.get_world_size()
    dist.all_gather_object(others, len(model_state))
    say(f"entries of the full model state per rank (cpu_offload): {others}")
    load = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(net, model_state, options=load)
    set_optimizer_state_dict(net, opt, optimizer_state, options=load)
    say("set_model_state_dict / set_optimizer_state_dict from rank 0: loaded")
    with torch.inference_mode():
        say(f"forward under inference_mode (every rank together): output {tuple(net(inputs[:2]).shape)}")
    try:
        first_non_finite({"model": net.state_dict()})
        say("first_non_finite on the sharded state dict: works")
    except RuntimeError as err:
        say(f"first_non_finite on the sharded state dict: fails ({str(err).splitlines()[0]})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
