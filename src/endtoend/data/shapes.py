"""The "shapes world": generated, seeded 64x64 scenes for segmentation and detection recipes.

Spec (other generators follow it too; models trained here are checked on their scenes):

- Image: 64x64 RGB uint8 (stored channel-first, 3x64x64, like the other bundled data).
- Background: a linear colour gradient between two random colours (each channel uniform in
  0-255) in a random direction; on half of the images, sinusoidal stripes added (period 4-12 px,
  random angle and phase, amplitude 10-25 grey levels, the same in all channels); then Gaussian
  pixel noise with std uniform in [4, 16] over the whole image, objects included, then clipped
  and rounded to uint8.
- Objects: 0-5 per image (uniform); class uniform over circle, square (axis-aligned), triangle
  (upright isosceles: apex at the top centre, base at the bottom, height = base); size
  (diameter, side, base) uniform over the integers 10..24 px; fully inside the image; flat
  colour, each channel uniform in 0-255, redrawn until it differs from the mean background
  colour under the object by at least 60 grey levels in at least one channel; an object
  overlaps any earlier one by at most 30% of its own area; later objects are drawn over
  earlier ones.
- Targets: `boxes` are the full shape's tight pixel bounds, xyxy float32, x2/y2 exclusive
  (occlusion does not shrink them); `labels` 0 circle, 1 square, 2 triangle; `mask` holds the
  class of each visible pixel: 0 background, 1 circle, 2 square, 3 triangle (= label + 1).

Placement is rejection sampling: each object keeps its class and size and retries its position
up to 50 times; if one cannot be placed, the whole layout is redrawn with the same count (so
the count stays uniform over 0-5), up to 20 times; only if all of those fail does the scene keep
the longest layout found, with fewer objects than drawn. With at most five objects of at most
24 px on 64x64, that last case is not expected in practice.

Rasterisation is exact integer arithmetic on pixel centres, and the box is computed from the
rasterised full-shape mask (`shape_mask`), so box and mask agree by construction: a shape of
`size` at top-left (x, y) covers exactly the box (x, y, x + size, y + size).

`make_scenes(count, seed)` draws scene i from its own generator, seeded by
`SeedSequence(seed, spawn_key=(i,))` (the i-th child of `SeedSequence(seed).spawn(...)`), so a
scene does not depend on how many are drawn: the first 10 of 100 are the 10 of 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from endtoend.errors import UsageError

CLASSES = ("circle", "square", "triangle")
SIZE = 64

_MIN_SIZE, _MAX_SIZE = 10, 24
_MAX_OBJECTS = 5
_MAX_OVERLAP = 0.3          # of the new object's own (full-shape) area, against each earlier one
_MIN_CONTRAST = 60          # grey levels, in at least one channel
_PLACE_TRIES = 50           # positions per object
_LAYOUT_TRIES = 20          # whole layouts per scene
_COLOUR_TRIES = 100         # each try fails with probability <= (121/256)^3 ~ 0.11
_NOISE_STD = (4.0, 16.0)
_STRIPE_PERIOD = (4.0, 12.0)
_STRIPE_AMPLITUDE = (10.0, 25.0)

# Twice the pixel-centre coordinates (2 * index + 1): with the shape's box also doubled, every
# inside test below is integer arithmetic, so no shape's bounds hinge on a rounding error.
_ROWS2, _COLS2 = np.mgrid[0:SIZE, 0:SIZE] * 2 + 1


@dataclass
class Scene:
    """One generated scene: `image` uint8 (3, 64, 64); `boxes` float32 (n, 4) xyxy with x2/y2
    exclusive; `labels` int64 (n,) indexing CLASSES; `mask` int64 (64, 64), 0 background and
    label + 1 on each object's visible pixels."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor


@dataclass
class _Object:
    label: int
    x: int
    y: int
    size: int
    full: np.ndarray      # bool (64, 64): the whole shape, occluded or not
    colour: np.ndarray    # int (3,)


@dataclass
class _Draft:
    """Everything `make_scene` draws, before it becomes tensors: the tests check the spec on it
    (contrast against `background`, noise against `clean`, the stripes flag)."""

    background: np.ndarray    # float (3, 64, 64): gradient (+ stripes), clipped to 0-255, no noise
    clean: np.ndarray         # float (3, 64, 64): background with the objects painted, no noise
    image: np.ndarray         # uint8 (3, 64, 64): clean + noise, clipped and rounded
    noise_std: float
    striped: bool
    objects: list[_Object]


def shape_mask(kind: str, x: int, y: int, size: int) -> np.ndarray:
    """Bool (64, 64) mask of the full shape `kind` (a name in CLASSES) whose tight bounds are
    columns x .. x+size-1 and rows y .. y+size-1: a circle of diameter `size`, an axis-aligned
    square of side `size`, or an upright isosceles triangle of base and height `size` (apex at
    the top centre). A pixel is inside when its centre is (for the triangle: when its centre
    lies within the triangle's width at the pixel's lower edge, so the apex row is not lost to
    the zero width at the very tip)."""
    if kind not in CLASSES:
        raise UsageError(f"shape_mask kind must be one of {CLASSES}, got {kind!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (x, y, size)):
        raise UsageError(f"shape_mask x, y and size must be integers, got {x!r}, {y!r}, {size!r}")
    if size < 1 or x < 0 or y < 0 or x + size > SIZE or y + size > SIZE:
        raise UsageError(f"shape_mask: a shape of size {size} at ({x}, {y}) is not inside {SIZE}x{SIZE}")
    dx = _COLS2 - (2 * x + size)     # twice the offset from the box centre
    dy = _ROWS2 - (2 * y + size)
    if kind == "circle":
        return dx * dx + dy * dy <= size * size
    inside_box = (np.abs(dx) < size) & (np.abs(dy) < size)
    if kind == "square":
        return inside_box
    # Row r of the triangle (r = 0 at the apex) has width (r + 1) at its lower edge, i.e. twice
    # the half-width is r + 1; 2 * r = dy + size - 1, so the test is |dx| <= (dy + size + 1) / 2.
    return inside_box & (2 * np.abs(dx) <= dy + size + 1)


def _tight_box(full: np.ndarray) -> list[float]:
    rows = np.flatnonzero(full.any(axis=1))
    cols = np.flatnonzero(full.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def _background(rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    start, end = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    along = np.cos(angle) * _COLS2 + np.sin(angle) * _ROWS2
    t = (along - along.min()) / (along.max() - along.min())   # 0 at one corner, 1 at the opposite
    background = start[:, None, None] + t * (end - start)[:, None, None]
    striped = bool(rng.random() < 0.5)
    if striped:
        period = rng.uniform(*_STRIPE_PERIOD)
        amplitude = rng.uniform(*_STRIPE_AMPLITUDE)
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        across = (np.cos(angle) * _COLS2 + np.sin(angle) * _ROWS2) / 2   # in pixels
        background = background + amplitude * np.sin(2 * np.pi * across / period + phase)
    # Clipped now, so the contrast rule compares against colours the image can really show.
    return np.clip(background, 0, 255), striped


def _layout(rng: np.random.Generator, count: int) -> list[_Object]:
    """Up to `count` placed objects (colours not drawn yet); fewer when one could not be placed."""
    objects: list[_Object] = []
    for _ in range(count):
        label = int(rng.integers(len(CLASSES)))
        size = int(rng.integers(_MIN_SIZE, _MAX_SIZE + 1))
        for _ in range(_PLACE_TRIES):
            # Only the position is retried: retrying sizes would favour small objects in full scenes.
            x, y = (int(v) for v in rng.integers(0, SIZE - size + 1, size=2))
            full = shape_mask(CLASSES[label], x, y, size)
            area = int(full.sum())
            if all(10 * int((full & earlier.full).sum()) <= 3 * area for earlier in objects):
                objects.append(_Object(label, x, y, size, full, np.zeros(3, dtype=np.int64)))
                break
        else:
            return objects
    return objects


def _draw(rng: np.random.Generator) -> _Draft:
    background, striped = _background(rng)
    count = int(rng.integers(_MAX_OBJECTS + 1))
    objects: list[_Object] = []
    for _ in range(_LAYOUT_TRIES):
        attempt = _layout(rng, count)
        if len(attempt) > len(objects):
            objects = attempt
        if len(objects) == count:
            break
    clean = background.copy()
    for obj in objects:
        # The reference is the noiseless background under the whole shape, earlier objects
        # ignored: the rule is about standing out from the scene's background, not from neighbours.
        under = background[:, obj.full].mean(axis=1)
        for _ in range(_COLOUR_TRIES):
            colour = rng.integers(0, 256, size=3)
            if np.abs(colour - under).max() >= _MIN_CONTRAST:
                break
        else:  # not expected; a colour that surely passes, so the rule holds without exception
            colour = np.array([0 if under[0] >= 128 else 255, colour[1], colour[2]])
        obj.colour = colour
        clean[:, obj.full] = colour[:, None]
    noise_std = float(rng.uniform(*_NOISE_STD))
    noisy = clean + rng.normal(0.0, noise_std, size=clean.shape)
    image = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return _Draft(background, clean, image, noise_std, striped, objects)


def _to_scene(draft: _Draft) -> Scene:
    mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    for obj in draft.objects:   # in drawing order: later objects cover earlier ones
        mask[obj.full] = obj.label + 1
    boxes = [_tight_box(obj.full) for obj in draft.objects]
    return Scene(image=torch.from_numpy(draft.image),
                 boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                 labels=torch.tensor([obj.label for obj in draft.objects], dtype=torch.int64),
                 mask=torch.from_numpy(mask))


def make_scene(rng: np.random.Generator) -> Scene:
    """One scene drawn from `rng` (see the module's docstring for the spec)."""
    return _to_scene(_draw(rng))


def _scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def make_scenes(count: int, seed: int) -> list[Scene]:
    """`count` scenes, scene i from a generator seeded by (seed, i): the same seed gives the same
    scenes, and the first k of any count are the same k scenes."""
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
        raise UsageError(f"make_scenes count must be a non-negative integer, got {count!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"make_scenes seed must be a non-negative integer, got {seed!r}")
    return [make_scene(_scene_rng(int(seed), i)) for i in range(int(count))]


def stack_images(scenes: list[Scene]) -> torch.Tensor:
    """The scenes' images as one uint8 (N, 3, 64, 64) tensor."""
    return torch.stack([scene.image for scene in scenes]) if scenes else \
        torch.zeros((0, 3, SIZE, SIZE), dtype=torch.uint8)


def stack_masks(scenes: list[Scene]) -> torch.Tensor:
    """The scenes' masks as one int64 (N, 64, 64) tensor of classes 0..3."""
    return torch.stack([scene.mask for scene in scenes]) if scenes else \
        torch.zeros((0, SIZE, SIZE), dtype=torch.int64)


def targets(scenes: list[Scene]) -> list[dict[str, torch.Tensor]]:
    """Detection targets in torchmetrics' (and torchvision's) format: one dict per scene with
    `boxes` float32 (n, 4) xyxy and `labels` int64 (n,)."""
    return [{"boxes": scene.boxes, "labels": scene.labels} for scene in scenes]
