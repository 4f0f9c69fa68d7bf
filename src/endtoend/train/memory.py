"""Activation checkpointing: trade compute for memory on deep models."""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_blocks(model: nn.Module) -> list[str]:
    """Recompute each block's activations in backward instead of storing them.

    The blocks are the children of the model's longest `nn.Sequential`/`nn.ModuleList`
    (the model itself when it is an `nn.Sequential`): for a ResNet stage list or a
    Transformer layer stack that is where activation memory grows with depth. Each block's
    forward is wrapped in `torch.utils.checkpoint.checkpoint` (non-reentrant, RNG state
    preserved, so dropout masks match). Caveat shared with torch.utils.checkpoint: BatchNorm
    running statistics are updated again during the recomputation. Returns the names wrapped.
    The wrapper is an instance attribute over the class's forward: `restore_blocks` removes
    it (fit does so when it returns or fails), leaving the user's modules as they were.
    """
    containers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    if not containers:
        return []
    prefix, stack = max(containers, key=lambda item: len(item[1]))
    wrapped = []
    for name, block in stack.named_children():
        if any(True for _ in block.parameters()) and not getattr(block, "_endtoend_checkpointed", False):
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
            block._endtoend_checkpointed = True
            wrapped.append(f"{prefix}.{name}" if prefix else name)
    return wrapped


def restore_blocks(model: nn.Module) -> None:
    """Undo `checkpoint_blocks`: every block runs its own forward again."""
    for module in model.modules():
        if module.__dict__.pop("_endtoend_checkpointed", False):
            module.__dict__.pop("forward", None)
