"""The multitask recipe's networks: one shared backbone with three heads, or one head alone.

    Backbone        segment's 3-level U-Net without its last layer: uint8 pixels -> the pooled
                    bottleneck's feature map and, with its decoder, full-resolution features
    MultiTaskNet    the backbone and all three heads: {"classes", "count", "mask"}
    SingleTaskNet   the same backbone (the encoder alone for classes and count, which never read
                    the decoder) and one head: {task: output}

Heads: the mask head is a 1x1 convolution on the decoder's 64x64 features (as segment's
U-Net); the classes head (3 logits, one per shape class: present or not) and the count head (one
regression output) are each a one-hidden-layer MLP on the bottleneck's average- and max-pooled
features, the average for how much of a thing there is (a count), the max for whether it is
anywhere at all. Every task reads the bottleneck, so its last convolution (`shared_layer`) is
the last layer all three share: the one GradNorm measures gradients on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from endtoend.recipes.segment import CLASSES as MASK_CLASSES
from endtoend.recipes.segment import Scale, conv_block

TASKS = ("classes", "count", "mask")
SHAPE_CLASSES = len(MASK_CLASSES) - 1   # circle, square, triangle (the mask adds background)


class Backbone(nn.Module):
    """(N, 3, 64, 64) uint8 -> {"bottleneck": (N, c, 16, 16)} and, with the decoder,
    "features": (N, a, 64, 64). Widths (a, b, c) per level, as segment's U-Net."""

    def __init__(self, widths: tuple[int, int, int], decoder: bool = True):
        super().__init__()
        a, b, c = widths
        self.scale = Scale()
        self.down1, self.down2, self.bottom = conv_block(3, a), conv_block(a, b), conv_block(b, c)
        self.decoder = decoder
        if decoder:
            self.up2, self.dec2 = nn.ConvTranspose2d(c, b, 2, stride=2), conv_block(2 * b, b)
            self.up1, self.dec1 = nn.ConvTranspose2d(b, a, 2, stride=2), conv_block(2 * a, a)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x1 = self.down1(self.scale(images))
        x2 = self.down2(F.max_pool2d(x1, 2))
        x3 = self.bottom(F.max_pool2d(x2, 2))
        if not self.decoder:
            return {"bottleneck": x3}
        y2 = self.dec2(torch.cat([self.up2(x3), x2], 1))
        y1 = self.dec1(torch.cat([self.up1(y2), x1], 1))
        return {"bottleneck": x3, "features": y1}


class PooledHead(nn.Module):
    """Average- and max-pooled (N, c, H, W) features -> (N, outputs) by a one-hidden-layer MLP."""

    def __init__(self, channels: int, outputs: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(), nn.Linear(channels, outputs))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([features.mean((2, 3)), features.amax((2, 3))], 1))


def make_head(task: str, widths: tuple[int, int, int]) -> nn.Module:
    a, _, c = widths
    if task == "mask":
        return nn.Conv2d(a, len(MASK_CLASSES), 1)
    return PooledHead(c, SHAPE_CLASSES if task == "classes" else 1)


def run_head(task: str, head: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """One head on the backbone's features: mask logits (N, 4, 64, 64), class logits (N, 3) or
    the count (N,)."""
    if task == "mask":
        return head(features["features"])
    out = head(features["bottleneck"])
    return out.squeeze(-1) if task == "count" else out


class MultiTaskNet(nn.Module):
    """One shared backbone, three heads: uint8 images -> {"classes": (N, 3) logits, "count": (N,),
    "mask": (N, 4, 64, 64) logits}."""

    def __init__(self, widths: tuple[int, int, int]):
        super().__init__()
        self.backbone = Backbone(widths)
        self.heads = nn.ModuleDict({task: make_head(task, widths) for task in TASKS})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        return {task: run_head(task, head, features) for task, head in self.heads.items()}

    def shared_layer(self) -> nn.Module:
        """The last layer every task reads: the bottleneck's second convolution."""
        return self.backbone.bottom[3]


class SingleTaskNet(nn.Module):
    """The backbone and one task's head: uint8 images -> {task: output}, the multi-task net's
    form for that task. The classes and count networks leave out the decoder (they never read
    it), so they hold only what their task uses."""

    def __init__(self, task: str, widths: tuple[int, int, int]):
        super().__init__()
        self.task = task
        self.backbone = Backbone(widths, decoder=task == "mask")
        self.head = make_head(task, widths)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.task: run_head(self.task, self.head, self.backbone(images))}
