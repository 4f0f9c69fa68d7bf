"""The driving simulator: the car's kinematics, the tracks, the expert, the camera's geometry,
and closed-loop driving with the safety driver (endtoend.sim)."""

from __future__ import annotations

import numpy as np
import pytest

from endtoend.sim import drive as sim
from endtoend.sim.camera import Camera
from endtoend.sim.car import DT, MAX_STEER, RATE, SPEED, WHEELBASE, CarState, step
from endtoend.sim.expert import expert_steering
from endtoend.sim.road import MAX_CURVATURE, ROAD_WIDTH, make_track


# --- the car ------------------------------------------------------------------------------

def test_straight_driving_moves_speed_times_dt_along_the_heading():
    state = CarState(1.0, 2.0, 0.3)
    moved = step(state, 0.0)
    assert np.hypot(moved.x - 1.0, moved.y - 2.0) == pytest.approx(SPEED * DT)
    assert np.arctan2(moved.y - 2.0, moved.x - 1.0) == pytest.approx(0.3)
    assert moved.heading == pytest.approx(0.3)


def test_constant_steering_drives_the_bicycle_models_circle():
    steer = 0.2
    state = CarState(0.0, 0.0, 0.0, steer)
    points = []
    for _ in range(200):
        state = step(state, steer)
        points.append((state.x, state.y))
    points = np.array(points)
    radius = WHEELBASE / np.tan(steer)  # the rear axle's circle, centred at (0, radius): left turn
    assert np.allclose(np.hypot(points[:, 0], points[:, 1] - radius), radius, atol=1e-6)
    assert state.heading == pytest.approx(200 * SPEED / WHEELBASE * np.tan(steer) * DT)


def test_the_actuator_is_rate_and_angle_limited():
    state = CarState(0.0, 0.0, 0.0)
    once = step(state, 1.0)
    assert once.steer == pytest.approx(RATE * DT)
    for _ in range(20):
        state = step(state, 1.0)
    assert state.steer == pytest.approx(MAX_STEER)
    noisy = [step(CarState(0, 0, 0), 0.0, np.random.default_rng(seed)).steer for seed in range(50)]
    assert 0 < np.std(noisy) < 0.02


# --- tracks -------------------------------------------------------------------------------

def test_tracks_are_seeded_smooth_and_bend_both_ways():
    a, b = make_track(7), make_track(7)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.look.asphalt, b.look.asphalt)
    assert not np.array_equal(make_track(8).curvature, a.curvature)
    tracks = [make_track(seed) for seed in range(20)]
    for road in tracks:
        steps = np.hypot(np.diff(road.x), np.diff(road.y))
        assert np.allclose(steps, road.s[1], rtol=1e-3)  # evenly sampled centre line
        assert np.abs(road.curvature).max() <= MAX_CURVATURE + 1e-12
        assert np.abs(np.diff(road.curvature)).max() < 0.01  # curvature varies smoothly
    extremes = np.array([(road.curvature.min(), road.curvature.max()) for road in tracks])
    assert (extremes[:, 0] < -0.04).any() and (extremes[:, 1] > 0.04).any()  # tight bends, both directions


def test_locating_points_on_the_raster_matches_the_exact_projection():
    road = make_track(3)
    rng = np.random.default_rng(0)
    i = rng.integers(0, len(road.s), 500)
    offset = rng.uniform(-5, 5, 500)
    px, py = road.x[i] - offset * np.sin(road.heading[i]), road.y[i] + offset * np.cos(road.heading[i])
    along, lateral = road.locate(px, py)
    exact_along, exact_lateral = road.locate_exact(px, py)
    assert np.allclose(lateral, offset, atol=0.02) and np.allclose(lateral, exact_lateral, atol=0.02)
    assert np.allclose(along, exact_along, atol=0.1)


def test_the_expert_stays_in_lane_on_every_track_tried():
    seeds = list(range(0, 40)) + list(range(1000, 1040)) + [777, 778, 779]
    records, _ = sim.drive(seeds, None)
    assert all(r.completed and r.interventions == 0 for r in records)
    assert max(r.lateral_errors.max() for r in records) < 1.0  # metres: the edge is 3 m away


# --- the camera ---------------------------------------------------------------------------

def test_project_and_unproject_are_inverse():
    camera = Camera()
    forward, left = np.array([3.0, 8.0, 20.0, 45.0]), np.array([-2.0, 0.5, 3.0, -6.0])
    rows, cols = camera.project(forward, left)
    back_forward, back_left = camera.unproject(rows, cols)
    assert np.allclose(back_forward, forward) and np.allclose(back_left, left)


@pytest.mark.parametrize("offset", [0.0, 1.0, -1.5])
def test_lane_markings_appear_where_the_cars_pose_says(offset):
    """On a straight road, the solid edge lines (3 m either side of the centre) show in each
    image row at the columns the pinhole model projects them to, for a car `offset` metres left
    of the centre line; so does the dashed centre line on its painted stretches."""
    road = make_track(5, straight=True)
    look = road.look
    look.wear, look.faded, look.shadows, look.shadow_angle = 0.0, np.zeros((0, 2)), np.zeros((0, 4)), np.zeros(0)
    look.asphalt, look.paint, look.centre_paint = np.full(3, 0.3), np.ones(3), np.ones(3)
    camera = Camera()
    state = CarState(40.0, offset, 0.0)  # the road runs along +x from the origin
    image = camera.render(road, state).astype(float).mean(axis=0)
    for forward in (5.0, 8.0, 12.0):
        row = int(round(float(camera.project(forward, 0.0)[0])))
        centre_forward = camera.unproject(row, camera.width / 2 - 0.5)[0]  # the ground this row sees
        for side in (-1, 1):
            line = side * (ROAD_WIDTH / 2 - 0.075) - offset  # the edge line's middle, in the car's frame
            expected = float(camera.project(centre_forward, line)[1])
            if not 2 <= expected <= camera.width - 3:
                continue
            window = np.arange(int(expected) - 4, int(expected) + 6)
            window = window[(window >= 0) & (window < camera.width)]
            brightest = window[np.argmax(image[row, window])]
            assert abs(brightest - expected) <= 1.5, (forward, side, brightest, expected)
            assert image[row, brightest] > image[row, int(camera.width / 2 + (expected - camera.width / 2) * 0.7)] + 20


def test_the_sky_is_above_the_horizon_and_grass_beside_the_road():
    road = make_track(5, straight=True)
    road.look.shadows, road.look.shadow_angle = np.zeros((0, 4)), np.zeros(0)
    camera = Camera()
    image = camera.render(road, CarState(40.0, 0.0, 0.0)).astype(float) / 255
    assert np.allclose(image[:, 0, 0], np.clip(road.look.sky * 1.05 * road.look.light, 0, 1), atol=0.03)
    row, col = (int(round(float(v))) for v in camera.project(8.0, 6.0))  # 6 m to the left: grass
    grass = road.look.grass * road.look.light
    assert np.abs(image[:, row, col] - grass).max() < 0.12
    row, col = (int(round(float(v))) for v in camera.project(8.0, 1.5))  # 1.5 m to the left: asphalt
    assert np.abs(image[:, row, col] - road.look.asphalt * road.look.light).max() < 0.12


# --- driving closed loop -----------------------------------------------------------------

def test_a_policy_that_leaves_the_road_is_taken_over_and_handed_back():
    records, data = sim.drive([1001], lambda frames: np.full(len(frames), 0.3), record=True, distance=100.0)
    record = records[0]
    assert not record.completed and record.interventions >= 2
    assert record.distance_before_failure < 30.0
    assert record.distance == pytest.approx(100.0, abs=1.0)  # the safety driver finishes the drive
    taken = ~record.autonomous
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], taken.astype(int), [0]]))))[::2]
    if taken[-1]:
        runs = runs[:-1]  # the drive ended during the last takeover
    assert len(runs) and (runs == int(round(sim.TAKEOVER / DT))).all()  # each takeover lasts 2 s
    frames, labels = data
    assert len(frames) == len(labels) == len(record.commands)
    assert labels[record.autonomous].mean() < -0.05  # the expert steers back right, against the policy

