"""Spatial: a replacement for cropping by integer slicing.

`images[:, :, int(y1):int(y2), int(x1):int(x2)]` turns the box into integers, so whatever
predicted the box (a detector, an attention module) gets no gradient from what the crop
did downstream. Sampling the crop with a grid makes it a smooth function of the box.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from endtoend.errors import UsageError
from endtoend.relax import _checks


def _pair(size: object) -> tuple[int, int]:
    """(h, w) from an int s (meaning (s, s), as torchvision's ops read it) or a pair of ints."""
    pair = (size, size) if isinstance(size, numbers.Integral) else size
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in pair)):
        raise UsageError(f"affine_crop: size must be an int > 0 or a pair (h, w) of them, got {size!r}")
    return int(pair[0]), int(pair[1])


def affine_crop(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int | tuple[int, int],
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Crop and resize one box per image by bilinear sampling, differentiable in images and boxes.

    Math: output pixel (i, j) samples the image at x = x1 + (j + 1/2) (x2 - x1) / w,
    y = y1 + (i + 1/2) (y2 - y1) / h (pixel centres; pixel k spans [k, k + 1)), through
    theta = [[(x2 - x1) / W, 0, (x1 + x2) / W - 1], [0, (y2 - y1) / H, (y1 + y2) / H - 1]].
    An integer box with size (y2 - y1, x2 - x1) reproduces images[:, :, y1:y2, x1:x2].
    Source: Jaderberg, Simonyan, Zisserman & Kavukcuoglu 2015, Spatial Transformer Networks
    (affine grid generator + bilinear sampler), via F.affine_grid / F.grid_sample.
    Shapes: images (B, C, H, W), boxes (B, 4) pixel xyxy, size (h, w) -> (B, C, h, w); an int
    size s means (s, s), as in torchvision.ops.roi_align.
    Use: for several boxes per image, repeat the image: affine_crop(images[index], boxes, size).

    Example:
        >>> import torch
        >>> from endtoend.relax import affine_crop
        >>> images = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> boxes = torch.tensor([[1.0, 0.0, 3.0, 2.0]], requires_grad=True)
        >>> crop = affine_crop(images, boxes, size=(2, 2))
        >>> torch.allclose(crop, images[:, :, 0:2, 1:3])
        True
        >>> crop.sum().backward()
        >>> bool(boxes.grad.abs().sum() > 0)
        True
    """
    _checks.tensors("affine_crop", images=images, boxes=boxes)
    out_height, out_width = _pair(size)
    if images.dim() != 4:
        raise UsageError(f"affine_crop: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if boxes.shape != (images.shape[0], 4):
        raise UsageError(f"affine_crop: boxes must be (B, 4) = ({images.shape[0]}, 4) pixel xyxy, one per image, "
                         f"got shape {tuple(boxes.shape)}")
    height, width = images.shape[-2:]
    x1, y1, x2, y2 = boxes.to(images.dtype).unbind(dim=1)
    zeros = torch.zeros_like(x1)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates in [-1, 1], where
    # (with align_corners=False) -1 and 1 are the outer edges of the first and last pixels.
    theta = torch.stack([
        torch.stack([(x2 - x1) / width, zeros, (x1 + x2) / width - 1], dim=1),
        torch.stack([zeros, (y2 - y1) / height, (y1 + y2) / height - 1], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], out_height, out_width], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
