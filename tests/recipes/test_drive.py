"""The drive recipe: its data, DAgger's aggregation, the closed-loop scores, `e2e predict` on
camera frames, and the --small comparison end to end (endtoend.recipes.drive)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from endtoend.cli import main
from endtoend.errors import UsageError
from endtoend.recipes import drive
from endtoend.recipes.drive_models import NetworkPolicy, SteeringNet
from endtoend.sim import drive as sim
from endtoend.sim.expert import expert_steering


@pytest.fixture(scope="module")
def small_data():
    return drive.load_data(small=True)


def test_small_data_is_expert_frames_and_evaluation_tracks_apart_from_training(small_data):
    frames, steering = small_data.train
    assert frames.dtype == torch.uint8 and frames.shape[1:] == (3, 48, 96)
    assert steering.dtype == torch.float32 and len(steering) == len(frames)
    assert len(frames) % (1 + drive.SHIFTS) == 0  # each expert frame and its shifted views
    drives, _ = small_data.test
    assert drives.tolist() == [[1000, 100], [1001, 100]]  # (track seed, metres), at most 2 with --small
    other = drive.load_data(small=True, eval_seed=777, tracks=5).test[0]
    assert other[:, 0].tolist() == [777, 778]


@pytest.mark.parametrize("eval_seed, tracks", [(0, 1), (99, 1), (500, 1), (599, 1), (490, 20)])
def test_evaluation_tracks_cannot_be_training_or_validation_tracks(eval_seed, tracks):
    with pytest.raises(UsageError, match=rf"--eval-seed {eval_seed}: evaluation tracks \({eval_seed}-"):
        drive.load_data(small=True, eval_seed=eval_seed, tracks=tracks)


def test_shifted_views_are_labelled_with_the_experts_command_at_that_pose():
    frames, labels = sim.expert_drive(3, shifts=2, distance=20.0)
    centre, shifted = labels[0::3], np.concatenate([labels[1::3], labels[2::3]])
    assert np.abs(shifted).mean() > 3 * np.abs(centre).mean()  # off-centre views call for corrections
    road = sim.track(3)
    state = sim.start_state(road)
    assert labels[0] == pytest.approx(expert_steering(road, state, 0.0), abs=1e-6)


def test_the_variants_train_on_the_experts_own_frames_only(small_data):
    inputs, targets = drive.variant_data("DAgger", small_data.train, True)
    plain = sim.expert_frames(drive.train_seeds(True), distance=drive.SMALL_DISTANCE)
    assert torch.equal(inputs, torch.from_numpy(plain[0])) and torch.equal(targets, torch.from_numpy(plain[1]))


def test_dagger_aggregates_the_frames_the_network_drove_into_labelled_by_the_expert(small_data):
    torch.manual_seed(0)
    model = SteeringNet(width=8).eval()
    train = (small_data.train[0][:50], small_data.train[1][:50])
    inputs, targets = drive.aggregate(model, train, 0, True)
    records, (frames, labels) = sim.drive(drive.train_seeds(True), NetworkPolicy(model), record=True,
                                          noise_seed=1, distance=drive.SMALL_DISTANCE)
    steps = sum(len(r.commands) for r in records)
    assert len(inputs) == len(targets) == 50 + steps  # the old set, then every frame driven
    assert torch.equal(inputs[:50], train[0]) and torch.equal(targets[:50], train[1])
    assert torch.equal(inputs[50:], torch.from_numpy(frames)) and torch.equal(targets[50:], torch.from_numpy(labels))
    assert not np.allclose(labels, np.concatenate([r.commands for r in records]))  # the expert's, not the net's


def _record(seed, completed, failure, interventions, lateral, open_loop):
    return sim.DriveRecord(seed=seed, completed=completed, distance_before_failure=failure,
                           interventions=interventions, distance=300.0, lateral_errors=np.array(lateral),
                           path=np.zeros((3, 2)), autonomous=np.ones(3, dtype=bool), commands=np.zeros(3),
                           policy_seconds=0.003, open_loop_errors=np.array(open_loop))


def test_evaluate_scores_drives_closed_and_open_loop():
    drives = [_record(1, True, 300.0, 0, [0.1, 0.3], [0.01]), _record(2, False, 100.0, 3, [0.2, 0.6], [0.03])]
    scores = drive.evaluate(drives, None)
    assert scores["completion"] == 0.5
    assert scores["distance_before_failure_m"] == 200.0
    assert scores["interventions_per_km"] == pytest.approx(3 / 0.6)
    assert scores["mean_abs_lateral_error_m"] == pytest.approx(0.3)
    assert scores["open_loop_steering_mae"] == pytest.approx(0.02)
    assert scores["policy_ms_per_frame"] == pytest.approx(1000 * 0.006 / 6)
    with pytest.raises(UsageError, match="scores closed-loop drives"):
        drive.evaluate(np.zeros(3), None)


def test_small_compare_writes_every_row_the_pictures_and_predicts_steering(tmp_path, capsys):
    import imageio.v3 as imageio

    out = tmp_path / "out"
    assert main(["compare", "drive", "--small", "--out", str(out), "--no-progress", "--eval-seed", "777"]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["options"] == {"eval_seed": 777, "tracks": 20}
    rows = {row["pipeline"]: row for row in comparison["rows"]}
    assert set(rows) == {"lane markings + Kalman + pursuit", "lane markings and road edges + Kalman + pursuit",
                         "end-to-end", "end-to-end: BC, no shifted views", "end-to-end: DAgger"}
    for row in rows.values():
        assert set(row["metrics"]) >= {"completion", "mean_abs_lateral_error_m", "distance_before_failure_m",
                                       "interventions_per_km", "open_loop_steering_mae"}
        assert 0 <= row["value"] <= 1 and row["metrics"]["distance_before_failure_m"] <= drive.SMALL_DISTANCE
    assert set(comparison["animations"]) == set(rows)
    gif = imageio.imread(out / comparison["animations"]["end-to-end: DAgger"], index=None)
    assert gif.ndim == 4 and gif.shape[-1] == 3 and len(gif) > 10
    page = (out / "report.html").read_text()
    assert "<h2>Examples</h2>" in page and "<h2>Animations</h2>" in page
    assert (out / "end-to-end-dagger" / "seed-0-round-0" / "summary.json").exists()
    capsys.readouterr()

    frame = sim.CAMERA.render(sim.track(1000), sim.start_state(sim.track(1000)))
    path = tmp_path / "frame.png"
    imageio.imwrite(path, frame.transpose(1, 2, 0))
    assert main(["predict", str(out / "end-to-end-dagger" / "seed-0"), str(path), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert list(results[0]) == ["input", "steering"] and abs(results[0]["steering"]) <= 0.5
    model_run = out / "end-to-end-dagger" / "seed-0"
    from endtoend.recipes.predict import load_trained

    _, model, _ = load_trained(model_run)
    expected = float(model.eval()(torch.from_numpy(frame)[None]).item())
    assert results[0]["steering"] == pytest.approx(expected, abs=1e-4)  # the PNG holds the frame exactly
