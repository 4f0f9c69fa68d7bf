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
    """One row per pipeline: what its camera saw (the 1.8 s before its first failure, when it
    failed; else a strip of its first drive), then its paths on the two tracks where the most
    pipelines failed (the same two for every row)."""
    names = [name for name, drives in predictions.items() if drives]
    shown = hardest_tracks(predictions, 2)
    figure = Figure(figsize=(13, 2.9 * len(names)))
    grid = figure.add_gridspec(len(names), 4, width_ratios=[1.6, 0.05, 1, 1])
    for row, name in enumerate(names):
        drives = predictions[name]
        camera = figure.add_subplot(grid[row, 0])
        failed = next((d for d in drives if d.before_failure is not None), None)
        if failed is not None:
            camera.imshow(tiles(failed.before_failure))
            camera.set_title(f"{name}: the camera before it left the road, track {failed.seed} at "
                             f"{failed.distance_before_failure:.0f} m ({conditions(failed)})", fontsize=8)
        else:
            camera.imshow(camera_strip(drives[0]))
            camera.set_title(f"{name}: camera, track {drives[0].seed} (no failure on any track)", fontsize=8)
        camera.axis("off")
        by_seed = {d.seed: d for d in drives}
        for column, seed in enumerate(shown):
            if seed in by_seed:
                draw_path(figure.add_subplot(grid[row, 2 + column]), by_seed[seed])
    figure.tight_layout()
    return figure


def hardest_tracks(predictions: dict[str, list], count: int) -> list[int]:
    """The `count` track seeds with the most interventions over all pipelines (ties: in order)."""
    seeds = [d.seed for d in next(iter(predictions.values()))]
    trouble = {seed: 0 for seed in seeds}
    for drives in predictions.values():
        for d in drives:
            trouble[d.seed] = trouble.get(d.seed, 0) + d.interventions
    return sorted(trouble, key=lambda seed: (-trouble[seed], seeds.index(seed) if seed in seeds else 0))[:count]


def conditions(record) -> str:
    """What the road was like where `record` first failed: worn or faded paint, a shadow in
    the 20 m before, the bend's radius."""
    road = sim.track(record.seed)
    s = record.distance_before_failure
    found = []
    if any(start - 15 <= s <= end + 5 for start, end in road.look.faded):
        found.append("faded paint")
    if road.look.wear > 0.35:
        found.append(f"worn paint ({road.look.wear:.0%})")
    i = int(np.clip(s / road.s[1], 0, len(road.s) - 1))
    lo = max(int((s - 20) / road.s[1]), 0)
    for x, y, along, _ in road.look.shadows:
        if np.min(np.hypot(road.x[lo:i + 1] - x, road.y[lo:i + 1] - y)) < along + 3:
            found.append("shadow")
            break
    window = road.curvature[lo:i + 1]
    bend = float(np.abs(window).max()) if len(window) else 0.0
    found.append(f"bend radius {1 / bend:.0f} m" if bend > 1 / 60 else "nearly straight")
    return ", ".join(found)


def tiles(frames: np.ndarray) -> np.ndarray:
    """Up to STRIP (3, H, W) frames in two rows of three, with white gaps."""
    padded = [np.pad(f.transpose(1, 2, 0), ((1, 1), (1, 1), (0, 0)), constant_values=255) for f in frames]
    while len(padded) < STRIP:
        padded.append(np.full_like(padded[0], 255))
    half = STRIP // 2
    return np.concatenate([np.concatenate(padded[:half], axis=1), np.concatenate(padded[half:STRIP], axis=1)], axis=0)


def camera_strip(record) -> np.ndarray:
    """STRIP frames evenly over the drive, in two rows; grey when the drive kept no frames."""
    if record.frames is None:
        return np.full((2 * 50, 98 * STRIP // 2, 3), 128, dtype=np.uint8)
    picks = np.linspace(0, len(record.frames) - 1, STRIP).astype(int)
    return tiles(record.frames[picks])


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
