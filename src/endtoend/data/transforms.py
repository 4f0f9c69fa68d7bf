"""Augmentation as batched tensor ops on the device: part of the model's graph (seed 002).

Each transform is an nn.Module that acts in train mode and is the identity in eval mode,
like Dropout, so `fit` can put it in front of the model and evaluation stays clean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RandomAffine(nn.Module):
    """Random rotation, scale and translation of a batch of images, one draw per image.

    Args:
        degrees: rotation drawn uniformly from [-degrees, degrees].
        scale: zoom drawn uniformly from [1 - scale, 1 + scale].
        translate: shift drawn uniformly from [-translate, translate], as a fraction of the size.

    Shapes: (N, C, H, W) -> (N, C, H, W). Differentiable with respect to the images.
    """

    def __init__(self, degrees: float = 10.0, scale: float = 0.1, translate: float = 0.1):
        super().__init__()
        self.degrees, self.scale, self.translate = degrees, scale, translate

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return images
        n, device = images.shape[0], images.device
        uniform = lambda *shape: torch.rand(*shape, device=device) * 2 - 1  # noqa: E731
        angle = uniform(n) * self.degrees * torch.pi / 180
        zoom = 1 + uniform(n) * self.scale
        # affine_grid works in [-1, 1] coordinates: a shift of `translate` of the size is 2x that.
        shift = uniform(n, 2) * self.translate * 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, scale={self.scale}, translate={self.translate}"
