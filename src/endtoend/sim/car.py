"""The car: a kinematic bicycle model at constant speed, with a steering actuator that is
limited in angle and rate and a little noisy.

The state is the rear axle's position, the heading and the steering angle actually applied.
A command (radians, positive = left) is what a driver or a policy asks for; the actuator
moves towards it by at most `RATE * DT` per step and adds noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WHEELBASE = 2.6      # metres between the axles
TRACK_WIDTH = 1.6    # metres between the left and right wheels
SPEED = 10.0         # metres per second, constant
DT = 0.1             # seconds per step (the camera's and the controller's rate)
MAX_STEER = 0.5      # radians
RATE = 1.2           # radians per second the actuator can turn
NOISE = 0.004        # standard deviation of the actuator's noise, radians per step


@dataclass
class CarState:
    x: float
    y: float
    heading: float
    steer: float = 0.0  # the steering angle applied, radians


def step(state: CarState, command: float, rng: np.random.Generator | None = None) -> CarState:
    """One DT of driving: the actuator moves towards `command` (limited, noisy), then the
    bicycle model drives the rear axle along the arc of curvature tan(steer) / L."""
    change = float(np.clip(command - state.steer, -RATE * DT, RATE * DT))
    steer = state.steer + change + (rng.normal(0.0, NOISE) if rng is not None else 0.0)
    steer = float(np.clip(steer, -MAX_STEER, MAX_STEER))
    turn = SPEED / WHEELBASE * np.tan(steer) * DT
    # The rear axle moves along an arc at constant steering: its chord points half-way through
    # the turn and is SPEED * DT * sin(turn / 2) / (turn / 2) long (exact, unlike an Euler step).
    chord = SPEED * DT * np.sinc(turn / (2 * np.pi))
    x = state.x + chord * np.cos(state.heading + turn / 2)
    y = state.y + chord * np.sin(state.heading + turn / 2)
    return CarState(float(x), float(y), float(state.heading + turn), steer)


def wheels(state: CarState) -> np.ndarray:
    """(4, 2) positions of the wheels: rear left, rear right, front left, front right."""
    cos, sin = np.cos(state.heading), np.sin(state.heading)
    forward = np.array([0.0, 0.0, WHEELBASE, WHEELBASE])
    left = np.array([1, -1, 1, -1]) * TRACK_WIDTH / 2
    return np.stack([state.x + forward * cos - left * sin, state.y + forward * sin + left * cos], axis=1)
