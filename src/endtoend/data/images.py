"""One image file -> one model input: `read_image(path, (height, width))`, for a recipe's
`read_input` (`e2e predict RUN_DIR digit.png`).

The result matches the bundled digit sets: a (1, height, width) float32 tensor in [0, 1],
grayscale, light figure on a dark background. So:

- any mode Pillow opens is taken: 1, L, P, RGB, CMYK, 16-bit I;16 (scaled by 65535), 32-bit
  I (by 65535, clipped), F (as is when every value is at most 1, else by 255, clipped); colour
  becomes luminance (ITU-R 601-2, Pillow's `convert("L")`); an animated file gives its first frame,
  and a JPEG's EXIF orientation is applied;
- transparency (RGBA, LA, PA, P or L with a transparent colour) is composited on black, so a
  transparent background reads as dark (and a dark figure on a transparent background vanishes:
  flatten such a file on white first);
- a dark figure on a light background is inverted (1 - x): when the mean of the image's border
  pixels (its outermost rows and columns, before resizing) is above 0.5, as for a scan or a
  drawing in black ink on white paper;
- it is resized to `size` with antialiasing (bilinear, widened when shrinking, so no aliasing
  and no overshoot).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from endtoend.errors import UsageError

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def read_image(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor:
    """The image at `path` as a (1, height, width) float32 tensor in [0, 1], with `size` =
    (height, width): grayscale, transparency on black, inverted when the border is light
    (see the module's docstring). A missing file, or one that Pillow cannot read, raises
    UsageError with one line naming the path and the problem."""
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):
        raise UsageError(f"read_image size must be (height, width), two positive integers, got {size!r}")
    gray = _grayscale(_open(path))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 0.5:  # dark on light: make it light on dark, like the bundled digits
        gray = 1.0 - gray
    image = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return image[0].clamp_(0.0, 1.0)


def _open(path: str | os.PathLike):
    """The decoded Pillow image (first frame, EXIF orientation applied), or one UsageError line."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not os.path.exists(path):
        raise UsageError(f"no such image file: {path}")
    if os.path.isdir(path):
        raise UsageError(f"cannot read image {path}: it is a folder, not an image file")
    try:
        image = Image.open(path)
        image.load()
        return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise UsageError(f"cannot read image {path}: not an image file that Pillow can open "
                         "(PNG, JPEG, BMP, GIF, TIFF, ...)") from None
    except Image.DecompressionBombError as error:
        raise UsageError(f"cannot read image {path}: too large ({_first_line(error)})") from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data, unreadable file
        raise UsageError(f"cannot read image {path}: {_first_line(error)}") from None


def _grayscale(image) -> np.ndarray:
    """A (height, width) float32 array in [0, 1], transparency composited on black."""
    mode = image.mode
    if mode.startswith("I;16"):
        gray = np.asarray(image, dtype=np.float32) / 65535.0
    elif mode == "I":  # 32-bit integers: 16-bit PNGs open so in some Pillow versions
        gray = np.asarray(image, dtype=np.float32) / 65535.0
    elif mode == "F":
        gray = np.nan_to_num(np.asarray(image, dtype=np.float32))
        gray = gray if gray.max(initial=0.0) <= 1.0 else gray / 255.0
    elif mode in _ALPHA_MODES or "transparency" in image.info:
        luminance_alpha = np.asarray(image.convert("RGBA").convert("LA"), dtype=np.float32) / 255.0
        luminance, alpha = luminance_alpha[..., 0], luminance_alpha[..., 1]
        gray = luminance * alpha  # on black: the luminance of (colour * alpha)
    else:
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return np.clip(gray, 0.0, 1.0)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_rgb(path: str | os.PathLike, size: int | tuple[int, int]) -> torch.Tensor:
    """The image at `path` as a (3, size, size) uint8 RGB tensor (or (3, height, width) for a
    size (height, width)), for models that take raw colour pixels (the shapes-world recipes,
    drive's camera frames): any mode Pillow opens, first frame, EXIF orientation
    applied, transparency composited on black, resized with Lanczos when its size differs. A
    missing or unreadable file raises UsageError with one line naming it."""
    from PIL import Image

    image = _open(path)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("RGB")
    height, width = (size, size) if isinstance(size, int) else size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)))
