"""Roads generated from a seed: a centre line of smoothly varying curvature, and how it looks.

A `Track` is a centre line sampled every `STEP` metres (x, y, heading, curvature against arc
length s), a road `ROAD_WIDTH` wide with solid edge lines and a dashed centre line, and its
appearance: asphalt and grass colours, lighting, faded stretches of marking and shadows. The
car drives on the centre line; it has left the road when any wheel is beyond an edge.
Everything about a track follows from its seed, so evaluation tracks are fixed by `--eval-seed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

STEP = 0.25            # metres between centre-line samples
ROAD_WIDTH = 6.0       # metres, edge to edge: two 3 m lanes, the dashed line between them
EDGE_LINE = 0.15       # width of the solid edge lines, inside the road edge
CENTRE_LINE = 0.12     # width of the dashed centre line
DASH, GAP = 3.0, 3.0   # metres of paint and of gap along the centre line
MAX_CURVATURE = 1 / 12  # the tightest bend: a 12 m radius
RASTER = 0.2           # metres per cell of the raster that renders look up
BAND = 12.0            # metres either side of the centre line that the raster covers
FAR_AWAY = 99.0        # the lateral offset the raster gives beyond the band: grass


@dataclass
class Look:
    """How a track looks: colours (RGB in [0, 1]), light, worn paint and shadows."""
    asphalt: np.ndarray
    grass: np.ndarray
    paint: np.ndarray          # the markings' colour
    centre_paint: np.ndarray   # white or yellow
    sky: np.ndarray
    light: float               # overall brightness factor
    wear: float                # 0 = fresh paint everywhere, 1 = gone
    faded: np.ndarray          # (k, 2) stretches [s0, s1] of the road whose paint is almost gone
    shadows: np.ndarray        # (k, 4) ellipses in world metres: x, y, radius along, radius across
    shadow_angle: np.ndarray   # (k,) each ellipse's orientation
    shadow_depth: float        # how much a shadow darkens (0 none, 1 black)
    texture: np.ndarray = field(repr=False, default=None)  # (T, T) noise tiled over the ground


@dataclass
class Track:
    seed: int
    s: np.ndarray          # arc length of each sample, metres
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray    # radians, counter-clockwise from +x
    curvature: np.ndarray  # 1/m, positive = bending left
    look: Look
    tree: cKDTree = field(repr=False, default=None)
    _grid: tuple | None = field(repr=False, default=None)

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def locate(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Arc length and signed lateral offset (left of the centre line positive) of points,
        interpolated from the track's raster of both (`_raster`). Points near two stretches of
        road (a road passing close by itself) take the nearer one; points more than BAND metres
        from the road get lateral offset FAR_AWAY."""
        if self._grid is None:
            self._grid = _raster(self)
        x0, y0, along, lateral = self._grid
        gx = np.clip((np.asarray(px) - np.float32(x0)) * np.float32(1 / RASTER), 0, along.shape[0] - 1.001)
        gy = np.clip((np.asarray(py) - np.float32(y0)) * np.float32(1 / RASTER), 0, along.shape[1] - 1.001)
        i, j = gx.astype(np.int64), gy.astype(np.int64)
        u, v = gx - i, gy - j

        def bilinear(grid: np.ndarray) -> np.ndarray:
            return ((grid[i, j] * (1 - v) + grid[i, j + 1] * v) * (1 - u)
                    + (grid[i + 1, j] * (1 - v) + grid[i + 1, j + 1] * v) * u)

        return bilinear(along), bilinear(lateral)

    def locate_exact(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`locate` from the nearest centre-line sample and its tangent, without the raster."""
        shape = np.shape(px)
        _, index = self.tree.query(np.stack([np.ravel(px), np.ravel(py)], axis=1))
        dx, dy = np.ravel(px) - self.x[index], np.ravel(py) - self.y[index]
        cos, sin = np.cos(self.heading[index]), np.sin(self.heading[index])
        along = self.s[index] + dx * cos + dy * sin
        lateral = -dx * sin + dy * cos
        return along.reshape(shape), lateral.reshape(shape)

    def locate_near(self, px: float, py: float, s_guess: float, window: float = 15.0) -> tuple[float, float]:
        """`locate` for one point, searching only within `window` metres of `s_guess`: the
        car's own place on the road, never the stretch a bend brings close."""
        lo = max(int((s_guess - window) / STEP), 0)
        hi = min(int((s_guess + window) / STEP) + 1, len(self.s))
        dx, dy = px - self.x[lo:hi], py - self.y[lo:hi]
        i = int(np.argmin(dx * dx + dy * dy))
        cos, sin = np.cos(self.heading[lo + i]), np.sin(self.heading[lo + i])
        return float(self.s[lo + i] + dx[i] * cos + dy[i] * sin), float(-dx[i] * sin + dy[i] * cos)

    def point_at(self, s: float) -> tuple[float, float, float]:
        """x, y and heading of the centre line at arc length s (clamped to the track)."""
        i = float(np.clip(s / STEP, 0, len(self.s) - 1))
        lo = min(int(i), len(self.s) - 2)
        t = i - lo
        heading = self.heading[lo] + t * (self.heading[lo + 1] - self.heading[lo])
        return (float(self.x[lo] + t * (self.x[lo + 1] - self.x[lo])),
                float(self.y[lo] + t * (self.y[lo + 1] - self.y[lo])), float(heading))


def _raster(track: Track) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Arc length and lateral offset on a RASTER-metre grid over the track's surroundings, so
    that a frame's ~10k ground points cost a bilinear lookup each rather than a nearest-point
    search: cells within BAND of the road are located exactly, the rest are FAR_AWAY."""
    x0, y0 = track.x.min() - BAND - 1, track.y.min() - BAND - 1
    nx = int((track.x.max() + BAND + 1 - x0) / RASTER) + 2
    ny = int((track.y.max() + BAND + 1 - y0) / RASTER) + 2
    coarse = 10  # cells per coarse cell: find the band coarsely, then locate its fine cells
    mask = np.zeros((nx // coarse + 1, ny // coarse + 1), dtype=bool)
    mask[((track.x - x0) / RASTER / coarse).astype(int), ((track.y - y0) / RASTER / coarse).astype(int)] = True
    mask = ndimage.binary_dilation(mask, iterations=int(np.ceil(BAND / RASTER / coarse)) + 1)
    mask = np.kron(mask, np.ones((coarse, coarse), dtype=bool))[:nx, :ny]
    i, j = np.nonzero(mask)
    along, lateral = track.locate_exact(x0 + i * RASTER, y0 + j * RASTER)
    along_grid = np.full((nx, ny), -1.0, dtype=np.float32)
    lateral_grid = np.full((nx, ny), FAR_AWAY, dtype=np.float32)
    near = np.abs(lateral) <= BAND
    along_grid[i[near], j[near]] = along[near]
    lateral_grid[i[near], j[near]] = lateral[near]
    return x0, y0, along_grid, lateral_grid


def curvature_profile(length: float, rng: np.random.Generator) -> np.ndarray:
    """Curvature against arc length: a few slow random sinusoids (gentle curves both ways),
    plus one to three tight bends (smooth bumps up to a 12 m radius), after a straight start."""
    s = np.arange(0.0, length + STEP, STEP)
    kappa = np.zeros_like(s)
    for _ in range(3):
        wavelength = rng.uniform(60.0, 200.0)
        kappa += rng.uniform(0.004, 0.02) * np.sin(2 * np.pi * s / wavelength + rng.uniform(0, 2 * np.pi))
    for _ in range(rng.integers(1, 4)):
        centre, width = rng.uniform(40.0, length - 20.0), rng.uniform(6.0, 14.0)
        kappa += rng.choice([-1, 1]) * rng.uniform(0.04, 0.07) * np.exp(-0.5 * ((s - centre) / width) ** 2)
    kappa *= np.clip(s / 20.0, 0.0, 1.0)  # ease in from a straight start
    return np.clip(kappa, -MAX_CURVATURE, MAX_CURVATURE)


def make_look(rng: np.random.Generator, length: float) -> Look:
    grey = rng.uniform(0.28, 0.45)
    asphalt = grey + rng.uniform(-0.03, 0.03, 3)
    grass = np.array([rng.uniform(0.15, 0.35), rng.uniform(0.35, 0.55), rng.uniform(0.1, 0.25)])
    if rng.random() < 0.25:  # dry, brownish verges
        grass = np.array([rng.uniform(0.4, 0.55), rng.uniform(0.38, 0.5), rng.uniform(0.2, 0.3)])
    paint = np.full(3, rng.uniform(0.85, 1.0))
    centre = np.array([0.95, 0.8, 0.2]) if rng.random() < 0.3 else paint
    sky = np.array([rng.uniform(0.5, 0.7), rng.uniform(0.65, 0.8), rng.uniform(0.85, 1.0)])
    faded = []
    for _ in range(rng.integers(0, 3)):
        start = rng.uniform(30.0, length - 40.0)
        faded.append([start, start + rng.uniform(10.0, 30.0)])
    count = int(rng.integers(0, 7))
    shadows = np.zeros((count, 4))
    texture = rng.normal(0.0, 1.0, (64, 64))
    texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) / 3  # a little spatial grain
    return Look(asphalt=asphalt, grass=grass, paint=paint, centre_paint=centre, sky=sky,
                light=float(rng.uniform(0.7, 1.25)), wear=float(rng.uniform(0.0, 0.5)),
                faded=np.array(faded).reshape(-1, 2), shadows=shadows,
                shadow_angle=rng.uniform(0, np.pi, count), shadow_depth=float(rng.uniform(0.35, 0.6)),
                texture=texture)


def make_track(seed: int, length: float = 360.0, straight: bool = False) -> Track:
    """The track of `seed`: `length` metres of centre line, its look, and its shadows (cast on
    the road by things beside it, so they fall where the car drives). `straight` gives the
    same look on a straight road (the renderer's geometry tests)."""
    rng = np.random.default_rng([seed, 20261202])
    kappa = curvature_profile(length, rng)
    if straight:
        kappa = np.zeros_like(kappa)
    heading = np.concatenate([[0.0], np.cumsum((kappa[1:] + kappa[:-1]) / 2 * STEP)])
    x = np.concatenate([[0.0], np.cumsum((np.cos(heading[1:]) + np.cos(heading[:-1])) / 2 * STEP)])
    y = np.concatenate([[0.0], np.cumsum((np.sin(heading[1:]) + np.sin(heading[:-1])) / 2 * STEP)])
    s = np.arange(len(kappa)) * STEP
    look = make_look(rng, length)
    for row in look.shadows:
        i = int(rng.integers(int(20 / STEP), len(s)))
        side = rng.uniform(-4.0, 4.0)
        row[:] = (x[i] - side * np.sin(heading[i]), y[i] + side * np.cos(heading[i]),
                  rng.uniform(2.0, 6.0), rng.uniform(1.0, 3.0))
    track = Track(seed=seed, s=s, x=x, y=y, heading=heading, curvature=kappa, look=look)
    track.tree = cKDTree(np.stack([x, y], axis=1))
    return track
