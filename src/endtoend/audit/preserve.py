"""Leaving no trace: everything the audit touches is restored, so training after an audit is
bit-identical to training without one (the forward moves BatchNorm statistics, the nudge
moves weights, the backward fills `.grad`, sampling draws from the RNG)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def preserved(model: nn.Module, input_leaves: list):
    """Restore parameters and buffers (objects and values: BatchNorm running stats), `.grad`
    (of the inputs too), requires_grad flags, train/eval modes and the RNG state."""
    input_grads = [(t, t.grad) for t in input_leaves]
    saved = []
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                # A lazy module's parameters do not exist yet: the forward creates them.
                if tensor is not None and not isinstance(tensor, nn.parameter.UninitializedTensorMixin):
                    saved.append((store, name, tensor, tensor.detach().clone(), tensor.grad, tensor.requires_grad))
    modes = [(m, m.training) for m in model.modules()]
    cuda = sorted({entry[2].device.index or 0 for entry in saved if entry[2].is_cuda})
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        with torch.no_grad():
            for store, name, tensor, value, grad, requires_grad in saved:
                store[name] = tensor
                tensor.copy_(value)
                tensor.grad = grad
                tensor.requires_grad_(requires_grad)
        for module, training in modes:
            module.training = training
        for tensor, grad in input_grads:
            tensor.grad = grad
