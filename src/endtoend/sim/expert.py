"""The expert: pure pursuit on the true centre line, the driver whose commands label frames.

It sees the car's true state (no camera): it aims at the centre-line point `LOOKAHEAD` metres
further along the road and steers the arc through it, delta = atan(2 L sin(alpha) / d).
The same law, fed a centre line estimated from pixels, is the staged pipeline's controller.
"""

from __future__ import annotations

import numpy as np

from endtoend.sim.car import MAX_STEER, WHEELBASE, CarState
from endtoend.sim.road import Track

LOOKAHEAD = 7.0  # metres


def pursuit(target_forward: float, target_left: float) -> float:
    """The steering (radians, positive = left) of the arc from the rear axle through a target
    point given in the car's frame, clipped to the actuator's range."""
    distance_sq = target_forward ** 2 + target_left ** 2
    curvature = 2.0 * target_left / max(distance_sq, 1e-6)
    return float(np.clip(np.arctan(WHEELBASE * curvature), -MAX_STEER, MAX_STEER))


def expert_steering(track: Track, state: CarState, s: float, lookahead: float = LOOKAHEAD) -> float:
    """The expert's command at `state`, whose place along the road is `s`."""
    tx, ty, _ = track.point_at(s + lookahead)
    dx, dy = tx - state.x, ty - state.y
    cos, sin = np.cos(state.heading), np.sin(state.heading)
    return pursuit(dx * cos + dy * sin, -dx * sin + dy * cos)
