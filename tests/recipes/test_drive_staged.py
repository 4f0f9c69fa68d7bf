"""The drive recipe's staged driver: perception at known poses, the filter through a frame
without markings, the lookahead geometry, and one short closed-loop drive. Fast."""

import numpy as np
import pytest

from endtoend.recipes.drive_staged import (
    LaneFollower, StagedDriver, acquire, lookahead_target, marking_points, road_boundary_points)
from endtoend.sim.car import CarState
from endtoend.sim.drive import CAMERA, drive, track

GENTLE = 7  # a training track the tuned pipeline drives cleanly


def _pose(seed: int, s: float, offset: float = 0.0, turn: float = 0.0) -> CarState:
    """The car `offset` metres left of the centre line at arc length s, turned `turn` rad left."""
    x, y, heading = track(seed).point_at(s)
    return CarState(x - offset * np.sin(heading), y + offset * np.cos(heading), heading + turn)


@pytest.mark.parametrize("offset", [-1.0, 0.0, 1.0])
def test_perception_finds_the_centre_line_from_a_known_pose(offset):
    policy = LaneFollower()
    policy.reset(1)
    image = CAMERA.render(track(GENTLE), _pose(GENTLE, 30.0, offset))
    forward, left = marking_points(image)
    assert len(forward) > 30 and np.all(forward > 2.0)
    policy._observe(policy._filters[0], image)   # one measurement, no motion prediction
    state = policy.state(0)
    assert state["offset"] == pytest.approx(-offset, abs=0.25)  # 1 m left of the centre: the line is 1 m right
    assert abs(state["heading"]) < 0.05


def test_heading_error_has_the_sign_of_the_road_relative_to_the_car():
    policy = LaneFollower()
    policy.reset(1)
    policy._observe(policy._filters[0], CAMERA.render(track(GENTLE), _pose(GENTLE, 30.0, 0.0, turn=0.1)))
    assert policy.state(0)["heading"] == pytest.approx(-0.1, abs=0.04)   # car turned left: the road points right


def test_road_boundary_points_lie_at_the_road_edges():
    image = CAMERA.render(track(GENTLE), _pose(GENTLE, 30.0))
    forward, left = road_boundary_points(image)
    near = forward < 12
    assert near.sum() > 10
    assert np.median(np.abs(left[near])) == pytest.approx(3.0, abs=0.3)


def test_acquire_finds_an_offset_from_scratch():
    forward, left = marking_points(CAMERA.render(track(GENTLE), _pose(GENTLE, 30.0, offset=0.8)))
    start, count = acquire(forward, left)
    assert count > 20 and start[0] == pytest.approx(-0.8, abs=0.5)   # a coarse seed: the robust fit refines it


def test_the_filter_keeps_its_estimate_on_a_frame_without_markings():
    policy = LaneFollower()
    policy.reset(1)
    road = track(GENTLE)
    for s in (30.0, 31.0, 32.0):
        policy(CAMERA.render(road, _pose(GENTLE, s, offset=0.5))[None])
    before = policy.state(0)
    grey = np.full((1, 3, CAMERA.height, CAMERA.width), 100, dtype=np.uint8)
    command = policy(grey)[0]
    after = policy.state(0)
    assert after["points"] == 0
    assert after["offset"] == pytest.approx(before["offset"], abs=0.1)
    assert after["heading"] == pytest.approx(before["heading"], abs=0.05)
    assert np.isfinite(command) and abs(command) < 0.2


def test_lookahead_target_on_a_straight_and_an_arc():
    assert lookahead_target(np.array([0.5, 0.0, 0.0]), 7.0) == pytest.approx((7.0, 0.5), abs=1e-3)
    radius = 20.0  # left = f^2 / (2 R) near the car: a point 7 m of arc along
    forward, left = lookahead_target(np.array([0.0, 0.0, 1 / (2 * radius)]), 7.0)
    assert forward == pytest.approx(radius * np.sin(7.0 / radius), abs=0.1)
    assert left == pytest.approx(radius * (1 - np.cos(7.0 / radius)), abs=0.1)


def test_a_closed_loop_drive_on_a_gentle_track_stays_on_the_road():
    records, _ = drive([GENTLE], LaneFollower())
    record = records[0]
    assert record.completed and record.interventions == 0
    assert record.lateral_errors.mean() < 0.3


def test_staged_driver_fit_tunes_on_its_tracks_only(monkeypatch):
    monkeypatch.setattr(StagedDriver, "CONTRASTS", (0.25,))
    monkeypatch.setattr(StagedDriver, "LOOKAHEADS", (7.0,))
    monkeypatch.setattr(StagedDriver, "SMOOTHINGS", ())
    seen = []
    import endtoend.recipes.drive_staged as module
    real = module.drive
    monkeypatch.setattr(module, "drive", lambda seeds, policy, **kw: (seen.extend(seeds), real(seeds, policy, **kw))[1])
    frames = np.stack([CAMERA.render(track(GENTLE), _pose(GENTLE, s)) for s in (20.0, 40.0)])
    driver = StagedDriver(tune_seeds=[GENTLE]).fit(frames, np.zeros(2))
    assert set(seen) == {GENTLE}
    assert isinstance(driver.policy, LaneFollower) and driver.policy.lookahead == 7.0
    assert driver.tuning["closed_loop"][(7.0, 1.0)][0] >= 1   # the one tune track completed


def test_drives_split_over_processes_are_the_drives_of_one_process():
    from endtoend.sim.drive import in_parallel

    seeds = [GENTLE, 1003]
    alone, _ = drive(seeds, LaneFollower(), distance=30.0)
    split = in_parallel(drive, seeds, LaneFollower(), 2, distance=30.0)
    assert [r.seed for r in split] == seeds
    for a, b in zip(alone, split):
        assert np.allclose(a.path, b.path) and np.allclose(a.commands, b.commands)


def test_staged_driver_predicts_the_recipes_test_items():
    driver = StagedDriver(tune_seeds=[GENTLE], n_jobs=1)
    records = driver.predict(np.array([[GENTLE, 20]]))  # (track seed, metres)
    assert len(records) == 1 and records[0].seed == GENTLE and records[0].distance == pytest.approx(20.0, abs=1.0)
    from endtoend.sim.drive import expert_drive

    assert len(records[0].open_loop_errors) == len(expert_drive(GENTLE, distance=20.0)[1])  # one per expert frame
