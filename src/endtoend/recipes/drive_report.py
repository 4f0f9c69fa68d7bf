"""drive's pictures in report.html: for each pipeline a strip of what its camera saw and the
top-down paths on two evaluation tracks (the car's path against the road, the stretches where
the safety driver had the wheel in red), and an animation of one drive."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from endtoend.sim import drive as sim
from endtoend.sim.road import ROAD_WIDTH

STRIP = 6       # camera frames per strip
SCALE = 3       # animation pixels per camera pixel
EVERY = 2       # animation: every second step (5 frames per second of driving)


def drives_figure(predictions: dict[str, list]) -> Figure:
    """One row per pipeline: its camera strip on the first evaluation track, then its paths on
    the first two."""
    names = [name for name, drives in predictions.items() if drives]
    figure = Figure(figsize=(13, 2.8 * len(names)))
    grid = figure.add_gridspec(len(names), 4, width_ratios=[1.6, 0.05, 1, 1])
    for row, name in enumerate(names):
        drives = predictions[name]
        strip = figure.add_subplot(grid[row, 0])
        strip.imshow(camera_strip(drives[0]))
        strip.set_title(f"{name}: camera, track {drives[0].seed}", fontsize=9)
        strip.axis("off")
        for column, record in enumerate(drives[:2]):
            draw_path(figure.add_subplot(grid[row, 2 + column]), record)
    figure.tight_layout()
    return figure


def camera_strip(record) -> np.ndarray:
    """STRIP frames evenly over the drive, in two rows (2 H, STRIP / 2 W, 3), with a white
    gap between them; grey when the drive kept no frames."""
    if record.frames is None:
        return np.full((2 * 48, 96 * STRIP // 2, 3), 128, dtype=np.uint8)
    picks = np.linspace(0, len(record.frames) - 1, STRIP).astype(int)
    tiles = [np.pad(record.frames[i].transpose(1, 2, 0), ((1, 1), (1, 1), (0, 0)), constant_values=255)
             for i in picks]
    half = STRIP // 2
    return np.concatenate([np.concatenate(tiles[:half], axis=1), np.concatenate(tiles[half:], axis=1)], axis=0)


def draw_path(axes, record) -> None:
    """The road of `record`'s track (edges, centre line) and the car's path on it."""
    road = sim.track(record.seed)
    ends = int(max(record.distance, 1.0) / (road.s[1] - road.s[0])) + 1
    x, y, heading = road.x[:ends], road.y[:ends], road.heading[:ends]
    for side in (-1, 1):
        offset = side * ROAD_WIDTH / 2
        axes.plot(x - offset * np.sin(heading), y + offset * np.cos(heading), color="#555", lw=0.8)
    axes.plot(x, y, color="#bbb", lw=0.6, ls="--")
    path = record.path
    driven = np.where(record.autonomous, 1.0, np.nan)
    axes.plot(path[:, 0] * driven, path[:, 1] * driven, color="#1f77b4", lw=1.2, label="policy")
    taken = np.where(~record.autonomous, 1.0, np.nan)
    axes.plot(path[:, 0] * taken, path[:, 1] * taken, color="#d62728", lw=2.0, label="safety driver")
    status = "completed" if record.completed else f"{record.interventions} intervention(s)"
    axes.set_title(f"track {record.seed}: {status}", fontsize=9)
    axes.set_aspect("equal")
    axes.set_xticks([])
    axes.set_yticks([])


def drive_frames(name: str, record) -> np.ndarray:
    """The animation of one drive: (T, H, W, 3) uint8, the camera enlarged SCALE times, with a
    bar under it showing the policy's command (blue) and red while the safety driver drives."""
    frames = record.frames[::EVERY].transpose(0, 2, 3, 1)
    frames = frames.repeat(SCALE, axis=1).repeat(SCALE, axis=2)
    count, height, width, _ = frames.shape
    bar = np.full((count, 10, width, 3), 255, dtype=np.uint8)
    centre = width // 2
    commands = record.commands[::EVERY][:count]
    autonomous = record.autonomous[::EVERY][:count]
    for i, (command, own) in enumerate(zip(commands, autonomous)):
        reach = int(np.clip(-command / 0.5, -1, 1) * (width // 2 - 2))  # positive = left: the bar grows left
        lo, hi = sorted((centre, centre + reach))
        bar[i, 2:8, lo:hi + 1] = (31, 119, 180) if own else (214, 39, 40)
        bar[i, :, centre] = 0
    return np.concatenate([frames, bar], axis=1)
