"""The camera: a forward-looking pinhole on the car, rendering the road as raw uint8 pixels.

Every pixel's ray is cast onto the flat ground once (`Camera.ground`, in the car's frame);
a frame moves those ground points to the world by the car's pose, asks the track where each
one lies (arc length, lateral offset) and paints asphalt, grass, edge lines, the dashed centre
line, worn paint and shadows, under the track's light, with haze towards the horizon. Frames
are rendered at twice the resolution and averaged down, so thin far markings blend instead of
flickering. `Camera.project` is the inverse (ground point -> pixel), used by the staged
pipeline's inverse perspective mapping and by the tests of the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from endtoend.sim.car import CarState
from endtoend.sim.road import CENTRE_LINE, DASH, EDGE_LINE, GAP, ROAD_WIDTH, Track

HEIGHT, WIDTH = 48, 96   # the frame, pixels
SUPERSAMPLE = 2
FAR = 60.0               # metres: beyond this the ground is lost in the haze


@dataclass
class Camera:
    height: int = HEIGHT
    width: int = WIDTH
    fov: float = np.radians(100.0)  # horizontal field of view
    pitch: float = np.radians(10.0)  # tilted down
    mount_height: float = 1.4        # metres above the ground
    mount_forward: float = 1.2       # metres ahead of the rear axle
    grid: tuple = field(init=False, repr=False)

    def __post_init__(self):
        self.focal = self.width / 2 / np.tan(self.fov / 2)
        self.grid = self.ground(SUPERSAMPLE)
        forward, left, hits, distance = self.grid
        self.ground_points = forward[hits], left[hits]
        self.haze = (1.0 - np.exp(-distance[hits] / 45.0)).astype(np.float32)[:, None]

    def ground(self, factor: int = 1):
        """Where each pixel's ray meets the ground, at `factor` times the resolution: forward and
        left distances from the car's rear axle, and a mask of the rays that hit it (not sky)."""
        rows = (np.arange(self.height * factor) + 0.5) / factor
        cols = (np.arange(self.width * factor) + 0.5) / factor
        down = (rows[:, None] - self.height / 2) / self.focal * np.ones_like(cols)[None, :]
        right = np.ones_like(rows)[:, None] * (cols[None, :] - self.width / 2) / self.focal
        cos, sin = np.cos(self.pitch), np.sin(self.pitch)
        ray_forward, ray_down = cos - down * sin, sin + down * cos
        hits = ray_down > 1e-6
        t = np.where(hits, self.mount_height / np.where(hits, ray_down, 1.0), np.inf)
        forward = t * ray_forward
        hits &= forward < FAR
        return (np.where(hits, forward + self.mount_forward, 0.0), np.where(hits, -t * right, 0.0), hits,
                np.where(hits, forward, FAR))

    def project(self, forward: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (row, column; fractional, 0 = the first pixel's centre) of ground
        points given in the car's frame (metres ahead of the rear axle, metres to the left)."""
        ahead = np.asarray(forward, dtype=float) - self.mount_forward
        cos, sin = np.cos(self.pitch), np.sin(self.pitch)
        z = ahead * cos + self.mount_height * sin
        y = -ahead * sin + self.mount_height * cos
        x = -np.asarray(left, dtype=float)
        return self.height / 2 + self.focal * y / z - 0.5, self.width / 2 + self.focal * x / z - 0.5

    def unproject(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground points (forward, left in the car's frame) seen at pixel coordinates; rows at or
        above the horizon give inf."""
        down = (np.asarray(rows, dtype=float) + 0.5 - self.height / 2) / self.focal
        right = (np.asarray(cols, dtype=float) + 0.5 - self.width / 2) / self.focal
        cos, sin = np.cos(self.pitch), np.sin(self.pitch)
        ray_down = sin + down * cos
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(ray_down > 1e-6, self.mount_height / ray_down, np.inf)
        return t * (cos - down * sin) + self.mount_forward, -t * right

    def render(self, track: Track, state: CarState, rng: np.random.Generator | None = None) -> np.ndarray:
        """The frame seen from `state` on `track`: uint8 (3, HEIGHT, WIDTH). `rng` adds sensor
        noise."""
        forward, left, hits, distance = self.grid
        cos, sin = np.cos(state.heading), np.sin(state.heading)
        forward, left = self.ground_points
        wx = (state.x + forward * cos - left * sin).astype(np.float32)
        wy = (state.y + forward * sin + left * cos).astype(np.float32)
        colour = paint_ground(track, wx, wy)
        look = track.look
        haze = self.haze
        colour = colour * (1 - haze) + look.sky * 0.9 * haze
        rows = self.height * SUPERSAMPLE
        image = np.empty((rows, self.width * SUPERSAMPLE, 3), dtype=np.float32)
        fade = np.linspace(0.0, 1.0, rows)[:, None, None]
        image[:] = look.sky * (1.05 - 0.2 * fade)  # the sky, lighter towards the horizon
        image[hits] = colour
        image = image.reshape(self.height, SUPERSAMPLE, self.width, SUPERSAMPLE, 3).sum(axis=(1, 3)) \
            * (look.light / SUPERSAMPLE ** 2)
        if rng is not None:
            image = image + rng.normal(0.0, 0.015, image.shape)
        return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1)


def paint_ground(track: Track, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """(n, 3) colours of ground points at world positions wx, wy (float32 arithmetic: this is
    the renderer's inner loop)."""
    look = track.look
    s, lateral = track.locate(wx, wy)
    side = np.abs(lateral)
    grain = look.texture[(wx * 5).astype(np.int64) % 64, (wy * 5).astype(np.int64) % 64]
    on_road = (side <= ROAD_WIDTH / 2) & (s >= 0) & (s <= track.length)
    asphalt, grass = look.asphalt.astype(np.float32), look.grass.astype(np.float32)
    colour = np.where(on_road[:, None], asphalt, grass) * (1 + np.where(on_road, 0.06, 0.18) * grain)[:, None]
    strength = np.full(s.shape, 1.0 - look.wear, dtype=np.float32)
    for start, end in look.faded:
        strength[(s >= start) & (s <= end)] *= 0.12
    edge = on_road & (side >= ROAD_WIDTH / 2 - EDGE_LINE)
    dashed = on_road & (side <= CENTRE_LINE / 2) & (np.mod(s, DASH + GAP) < DASH)
    for where, paint in ((edge, look.paint), (dashed, look.centre_paint)):
        if where.any():
            mix = strength[where][:, None]
            colour[where] = colour[where] * (1 - mix) + paint.astype(np.float32) * mix
    shade = np.ones(s.shape, dtype=np.float32)
    reach = FAR + 10.0
    near_x, near_y = wx.mean(), wy.mean()
    for (cx, cy, along, across), angle in zip(look.shadows, look.shadow_angle):
        if abs(cx - near_x) > reach or abs(cy - near_y) > reach:
            continue  # out of sight
        dx, dy = wx - cx, wy - cy
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / along
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / across
        shade[u * u + v * v < 1.0] = 1 - look.shadow_depth
    return colour * shade[:, None]
