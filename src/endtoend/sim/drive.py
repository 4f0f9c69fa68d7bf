"""Driving a policy closed loop, with the expert as safety driver; and the expert's own drives.

A policy is any callable images -> steering: uint8 (K, 3, H, W) frames, one per car, to K
commands in radians (positive = left); one with a `reset(count)` method is told when K new
drives start (the staged pipeline keeps a filter per car). Drives on several tracks run in
lockstep, so a network policy sees one batch per step.

The safety driver: whenever any wheel is beyond the road's edge, the expert takes the wheel
for `TAKEOVER` seconds, then hands back. A drive counts as completed when the policy drove the
whole `DISTANCE` without one intervention.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

from endtoend.sim.camera import Camera
from endtoend.sim.car import DT, SPEED, WHEELBASE, CarState, step, wheels
from endtoend.sim.expert import expert_steering
from endtoend.sim.road import ROAD_WIDTH, Track, make_track

DISTANCE = 300.0     # metres of road each drive covers
TAKEOVER = 2.0       # seconds the safety driver keeps the wheel


BEFORE, BEFORE_EVERY = 6, 3  # frames kept before a failure, every third step (the last 1.8 s)


def max_steps(distance: float) -> int:
    return int(1.5 * distance / (SPEED * DT))  # a car that makes no progress still stops
CAMERA = Camera()
Policy = Callable[[np.ndarray], np.ndarray]


@lru_cache(maxsize=48)
def track(seed: int) -> Track:
    """The track of `seed`, DISTANCE plus the camera's view of road: built once per process."""
    return make_track(int(seed), length=DISTANCE + 60.0)


@dataclass
class DriveRecord:
    """One closed-loop drive on one track."""
    seed: int
    completed: bool
    distance_before_failure: float     # metres along the road before the first intervention
    interventions: int
    distance: float                    # metres along the road driven in all
    lateral_errors: np.ndarray         # |offset| of the car's centre from the centre line, each step the policy drove
    path: np.ndarray                   # (steps, 2) the car's centre, world metres
    autonomous: np.ndarray             # (steps,) bool: the policy drove (not the safety driver)
    commands: np.ndarray               # (steps,) the policy's commands
    policy_seconds: float              # time spent in the policy, all cars of the batch together
    frames: np.ndarray | None = None   # (steps, 3, H, W) uint8 when kept
    before_failure: np.ndarray | None = None  # (<= BEFORE, 3, H, W): what the camera saw leading up to the first failure
    open_loop_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))  # |policy - expert| on the expert's frames


def centre(state: CarState) -> tuple[float, float]:
    return (state.x + WHEELBASE / 2 * np.cos(state.heading), state.y + WHEELBASE / 2 * np.sin(state.heading))


def off_road(road: Track, state: CarState, s: float) -> bool:
    """Any wheel beyond an edge of the road."""
    return any(abs(road.locate_near(wx, wy, s)[1]) > ROAD_WIDTH / 2 for wx, wy in wheels(state))


def start_state(road: Track) -> CarState:
    x, y, heading = road.point_at(0.0)
    return CarState(x, y, heading)


def drive(seeds: list[int], policy: Policy | None, *, keep_frames: int = 0, record: bool = False,
          noise_seed: int = 0, distance: float = DISTANCE) -> tuple[list[DriveRecord], tuple[np.ndarray, np.ndarray] | None]:
    """Drive `policy` on the tracks of `seeds` in lockstep, the expert as safety driver.

    `policy=None` lets the expert drive (nothing is rendered unless frames are kept or
    recorded): the reference drive, and the test that every track can be driven.
    Returns one DriveRecord per track (the first `keep_frames` keep their frames) and, with
    `record`, the DAgger data: every frame the cars saw, labelled with the expert's command
    there, as (uint8 (n, 3, H, W), float32 (n,)). Actuator noise is drawn from `noise_seed`
    and the track's seed, so a drive is reproducible.
    """
    roads = [track(seed) for seed in seeds]
    count = len(roads)
    states = [start_state(road) for road in roads]
    rngs = [np.random.default_rng([noise_seed, int(seed), 7]) for seed in seeds]
    along = np.zeros(count)
    takeover = np.zeros(count, dtype=int)
    interventions = np.zeros(count, dtype=int)
    first_failure = np.full(count, np.nan)
    done = np.zeros(count, dtype=bool)
    logs = [dict(path=[], autonomous=[], commands=[], lateral=[], frames=[], recent=[], before=None)
            for _ in range(count)]
    seen, labels = [], []
    if hasattr(policy, "reset"):
        policy.reset(count)
    policy_seconds = 0.0
    frames = np.zeros((count, 3, CAMERA.height, CAMERA.width), dtype=np.uint8)
    distance = min(float(distance), DISTANCE)
    for _ in range(max_steps(distance)):
        if done.all():
            break
        if policy is not None or record or keep_frames:
            for k in np.flatnonzero(~done):
                frames[k] = CAMERA.render(roads[k], states[k])
        started = time.perf_counter()
        commands = np.asarray(policy(frames), dtype=float).reshape(count) if policy is not None else None
        policy_seconds += time.perf_counter() - started
        for k in np.flatnonzero(~done):
            road, state = roads[k], states[k]
            expert = expert_steering(road, state, along[k])
            command = expert if policy is None else commands[k]
            if record:
                seen.append(frames[k].copy())
                labels.append(expert)
            log = logs[k]
            if policy is not None:
                log["recent"] = (log["recent"] + [frames[k].copy()])[-BEFORE * BEFORE_EVERY:]
            if takeover[k] == 0 and off_road(road, state, along[k]):
                if interventions[k] == 0 and log["recent"]:
                    log["before"] = np.stack(log["recent"][::-1][::BEFORE_EVERY][::-1])
                interventions[k] += 1
                takeover[k] = int(round(TAKEOVER / DT))
                if np.isnan(first_failure[k]):
                    first_failure[k] = along[k]
            autonomous = takeover[k] == 0
            cx, cy = centre(state)
            log["path"].append((cx, cy))
            log["autonomous"].append(autonomous)
            log["commands"].append(command)
            if autonomous:
                log["lateral"].append(abs(road.locate_near(cx, cy, along[k])[1]))
            if k < keep_frames:
                log["frames"].append(frames[k].copy())
            states[k] = step(state, command if autonomous else expert, rngs[k])
            takeover[k] = max(takeover[k] - 1, 0)
            along[k] = road.locate_near(states[k].x, states[k].y, along[k])[0]
            done[k] = along[k] >= distance
    records = []
    for k, seed in enumerate(seeds):
        log = logs[k]
        records.append(DriveRecord(
            seed=int(seed), completed=bool(interventions[k] == 0 and along[k] >= distance),
            distance_before_failure=float(first_failure[k] if not np.isnan(first_failure[k]) else min(along[k], distance)),
            interventions=int(interventions[k]), distance=float(min(along[k], distance)),
            lateral_errors=np.array(log["lateral"]), path=np.array(log["path"]).reshape(-1, 2),
            autonomous=np.array(log["autonomous"], dtype=bool), commands=np.array(log["commands"]),
            policy_seconds=policy_seconds / count,
            frames=np.stack(log["frames"]) if log["frames"] else None, before_failure=log["before"]))
    data = (np.stack(seen), np.array(labels, dtype=np.float32)) if record and seen else None
    return records, data


def drives_of(items) -> tuple[list[int], float]:
    """The drive recipe's test items, (K, 2) integers (a tensor or an array): each a track's
    seed and the metres to drive on it -> (seeds, metres)."""
    rows = np.asarray(items.detach().cpu() if hasattr(items, "detach") else items).reshape(-1, 2)
    return [int(seed) for seed in rows[:, 0]], float(rows[0, 1]) if len(rows) else DISTANCE


def evaluate_policy(seeds: list[int], policy: Policy, keep_frames: int = 2, distance: float = DISTANCE,
                    n_jobs: int = 1) -> list[DriveRecord]:
    """What every pipeline's predictions are: its closed-loop drives on the tracks of `seeds`
    (the first `keep_frames` keep their frames, for the report), each with the open-loop
    errors of the same policy on the expert's frames of that track. `n_jobs` > 1 (-1: every
    core) splits the tracks over processes (`in_parallel`)."""
    if n_jobs != 1:
        return in_parallel(evaluate_policy, list(seeds), policy, n_jobs, keep_frames=keep_frames, distance=distance)
    records, _ = drive(list(seeds), policy, keep_frames=keep_frames, distance=distance)
    for record in records:
        record.open_loop_errors = open_loop_errors(record.seed, policy, distance)
    return records


def in_parallel(work: Callable, seeds: list[int], policy: Policy, n_jobs: int, keep_frames: int = 0,
                **kwargs) -> list[DriveRecord]:
    """`work(seeds, policy, keep_frames=, **kwargs)` (drive's records, or evaluate_policy) with
    the tracks split over processes (joblib), each process driving its own copy of the policy:
    for policies that keep one state per car and cost a core each (the staged pipeline), not
    for a network, which drives every car in one batch. The records are those of one process
    (actuator noise is drawn per track); only the first group keeps frames."""
    from joblib import Parallel, delayed, effective_n_jobs

    groups = min(effective_n_jobs(n_jobs), len(seeds))
    if groups <= 1 or len(seeds) < 2:
        return _records_of(work, seeds, policy, keep_frames=keep_frames, **kwargs)
    parts = np.array_split(np.asarray(seeds), groups)
    done = Parallel(n_jobs=groups)(delayed(_records_of)(work, [int(s) for s in part], policy,
                                                        keep_frames=keep_frames if i == 0 else 0, **kwargs)
                                   for i, part in enumerate(parts))
    return [record for part in done for record in part]


def _records_of(work: Callable, seeds: list[int], policy: Policy, **kwargs) -> list[DriveRecord]:
    result = work(seeds, policy, **kwargs)
    return result[0] if isinstance(result, tuple) else result  # drive() returns (records, data)


@lru_cache(maxsize=32)
def expert_drive(seed: int, shifts: int = 0, shift_seed: int = 0,
                 distance: float = DISTANCE) -> tuple[np.ndarray, np.ndarray]:
    """The expert's own drive of `distance` metres on the track of `seed`: every frame and its command, as uint8
    (n, 3, H, W) and float32 (n,). With `shifts`, each step also renders that many frames from
    poses shifted sideways (up to 1 m) and turned (up to 0.12 rad), each labelled with what the
    expert would command there: the shifted-camera augmentation of behaviour cloning, which
    shows the network how to recover from states the expert itself never visits."""
    road = track(seed)
    state = start_state(road)
    rng = np.random.default_rng([shift_seed, int(seed), 11])
    noise = np.random.default_rng([0, int(seed), 13])
    along = 0.0
    frames, labels = [], []
    for _ in range(max_steps(distance)):
        if along >= min(distance, DISTANCE):
            break
        command = expert_steering(road, state, along)
        frames.append(CAMERA.render(road, state))
        labels.append(command)
        for _ in range(shifts):
            offset, turn = rng.uniform(-1.0, 1.0), rng.uniform(-0.12, 0.12)
            shifted = CarState(state.x - offset * np.sin(state.heading), state.y + offset * np.cos(state.heading),
                               state.heading + turn, state.steer)
            shifted_along = road.locate_near(shifted.x, shifted.y, along)[0]
            frames.append(CAMERA.render(road, shifted))
            labels.append(expert_steering(road, shifted, shifted_along))
        state = step(state, command, noise)
        along = road.locate_near(state.x, state.y, along)[0]
    return np.stack(frames), np.array(labels, dtype=np.float32)


def expert_frames(seeds: list[int], shifts: int = 0, shift_seed: int = 0,
                  distance: float = DISTANCE) -> tuple[np.ndarray, np.ndarray]:
    """The expert's drives on several tracks, concatenated."""
    drives = [expert_drive(int(seed), shifts, shift_seed, float(distance)) for seed in seeds]
    return np.concatenate([d[0] for d in drives]), np.concatenate([d[1] for d in drives])


def open_loop_errors(seed: int, policy: Policy, distance: float = DISTANCE) -> np.ndarray:
    """|policy - expert| on the expert's own frames of one track, fed in order (a stateful
    policy sees the sequence it would see driving like the expert)."""
    frames, labels = expert_drive(int(seed), distance=float(distance))
    if hasattr(policy, "reset"):
        policy.reset(1)
        predicted = np.array([float(np.asarray(policy(frames[i:i + 1])).reshape(-1)[0]) for i in range(len(frames))])
    else:  # stateless: the frames in batches
        predicted = np.concatenate([np.asarray(policy(frames[i:i + 256]), dtype=float).reshape(-1)
                                    for i in range(0, len(frames), 256)])
    return np.abs(predicted - labels)
