"""The memory layout the network trains in: channels_last for 2-D convolutions on the CPU.

oneDNN's CPU convolutions run faster on channels_last (NHWC) weights: measured per training
step, 1.24-1.36x on the recipes' classification CNNs, 0.90-1.06x on the others
(benchmarks/layout.py, benchmarks/RESULTS.md "Memory layout"). `fit(channels_last="auto")`,
the default, therefore trains a model with an `nn.Conv2d` in channels_last on the CPU, in one
process; `True` asks for it anywhere (CUDA with mixed precision is where PyTorch's tuning
guide expects it to pay; not measured here), `False` never.

Two promises keep the switch invisible:
- a model whose forward cannot run channels_last (a `.view()` of a conv output, a custom op
  that reads raw NCHW memory) is caught before training: one forward in eval mode on the
  first batch in both layouts, and unless they agree, the model trains as it came, with a note;
- fit puts the network back in the layout it came in before it returns, so the user's model,
  its state_dict, the checkpoints and model.safetensors are contiguous as before (checkpoints
  written during training are contiguous copies anyway).
Only the order of float sums inside the convolutions changes, as on another CPU.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from endtoend.train.distributed import tensors_in
from endtoend.train.evaluate import kept_modes


def wanted(setting: Any, network: nn.Module, device: torch.device, world_size: int) -> bool:
    """Whether to try channels_last: `True`; or `"auto"` on the CPU, in one process, for a
    network with a 2-D convolution whose weights are not channels_last already."""
    if setting is not True and setting != "auto":
        return False
    weights = [m.weight for m in network.modules() if isinstance(m, nn.Conv2d)]
    if not weights:
        return False  # nothing to gain
    if any(_channels_last(weight) for weight in weights):
        return False  # the user chose the layout already: keep it, and leave it as it is afterwards
    return setting is True or (device.type == "cpu" and world_size == 1)


def adopt(network: nn.Module, inputs: Any, note: Callable[[str], None]) -> bool:
    """Convert `network` to channels_last when its eval-mode forward on `inputs` gives the same
    outputs in both layouts; else leave it as it is and say why. True when converted."""
    with kept_modes(network), torch.no_grad():
        network.eval()
        before = tensors_in(network(inputs))
        network.to(memory_format=torch.channels_last)
        try:
            after = tensors_in(network(inputs))
        except Exception as error:  # noqa: BLE001 - any failure means: keep the user's layout
            first_line = (str(error).splitlines() or [""])[0][:120]
            reason = f"its forward fails in channels_last ({type(error).__name__}: {first_line})"
        else:
            agree = before is not None and after is not None and _agree(before, after)
            reason = None if agree else "its outputs differ in channels_last"
    if reason is None:
        return True
    restore(network)
    note(f"training in the model's own memory layout: {reason}; pass channels_last=False to skip this check")
    return False


def restore(network: nn.Module) -> None:
    """The network back in the usual contiguous (NCHW) layout."""
    network.to(memory_format=torch.contiguous_format)


def _channels_last(weight: torch.Tensor) -> bool:
    """Stored NHWC (a weight with one input channel or a 1x1 kernel is both layouts at once)."""
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _agree(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    if len(before) != len(after):
        return False
    for a, b in zip(before, after):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            scale = a.abs().max().item() if a.numel() else 0.0
            if not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(scale, 1.0), equal_nan=True):
                return False
        elif not torch.equal(a, b):
            return False
    return True
