"""Drive: from camera pixels to the steering wheel, closed loop (endtoend.sim).

The task: keep a car (kinematic bicycle, 10 m/s) on generated roads for 300 m, seeing only a
48x96 RGB forward camera. Tracks vary in bends (down to a 12 m radius, both ways), colours,
light, worn and faded paint and shadows; the expert (pure pursuit on the true centre line)
labels frames and is the safety driver who takes over for 2 s whenever a wheel leaves the road.

Data: train = the expert's frames on tracks 0-7 (8 tracks; 2 with --small), each step also
seen from two shifted and turned poses labelled with the expert's command there (the
shifted-camera augmentation of behaviour cloning); val = the expert's frames on tracks
500-501 (open-loop steering error: what fit monitors). Test = evaluation *tracks*, not frames:
the seeds eval_seed .. eval_seed + tracks - 1 (`--eval-seed`, default 1000; `--tracks`,
default 20, at most 2 with --small), never used in training; each test item is (seed, metres).
--small drives 100 m instead of 300 m and trains on 2 tracks. Every pipeline's prediction on
them is its closed-loop drives (endtoend.sim.drive.DriveRecord), so one `evaluate` scores all.

Staged: lane-marking detection on the pixels -> lateral offset and heading from the fitted lines
-> the expert's own control law, tuned on training tracks (drive_staged.StagedDriver).
End-to-end: a PilotNet-style CNN from pixels to steering (drive_models.SteeringNet) trained by
behaviour cloning; and the same CNN trained with DAgger (variant "DAgger"): after each training
it drives the training tracks itself, the expert labels every frame it saw, the frames join the
training set, and it trains on.
`e2e predict RUN frame.png` reads camera frames (resized to 48x96) and prints the steering.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from endtoend.data import Splits, read_rgb
from endtoend.errors import UsageError
from endtoend.recipes.drive_models import NetworkPolicy, SteeringNet
from endtoend.sim import drive as sim
from endtoend.sim.camera import HEIGHT, WIDTH

NAME = "drive"
DESCRIPTION = ("driving from camera pixels, closed loop, 300 m tracks: lane detection + state estimate + "
               "pursuit vs a CNN by behaviour cloning and by DAgger")
METRIC = "completion"
HIGHER_IS_BETTER = True
OPTIONS = {"eval_seed": (1000, "seed of the first evaluation track (training uses 0-99, validation 500-599)"),
           "tracks": (20, "how many evaluation tracks (at most 2 with --small)")}
FIT_TEST = False    # the test split is tracks to drive, which `fit` cannot score; evaluate does
TIMING_ITEMS = 0    # an item is a whole drive, rendering included: evaluate times the policy per frame instead

TRAIN_TRACKS, SMALL_TRAIN_TRACKS = 8, 2
SMALL_DISTANCE = 100.0  # metres per drive with --small (300, sim.DISTANCE, otherwise)
VAL_SEEDS = (500, 501)
SHIFTS = 2          # shifted-pose frames per expert frame
TUNE_SEEDS = (0, 1, 2)  # training tracks the staged pipelines' gains are tuned on
DAGGER_ROUNDS = 3


def train_seeds(small: bool) -> list[int]:
    return list(range(SMALL_TRAIN_TRACKS if small else TRAIN_TRACKS))


def distance(small: bool) -> float:
    return SMALL_DISTANCE if small else sim.DISTANCE


def load_data(small: bool = False, eval_seed: int = 1000, tracks: int = 20) -> Splits:
    if tracks < 1:
        raise UsageError(f"--tracks {tracks}: evaluate on at least one track")
    last = eval_seed + tracks - 1
    if eval_seed < 100 or (eval_seed < 600 and last >= 500) or last >= 2**31:
        raise UsageError(f"--eval-seed {eval_seed}: evaluation tracks ({eval_seed}-{last}) must not be training (0-99) "
                         f"or validation (500-599) tracks; choose seeds from 100 up, outside 500-599")
    tracks = min(tracks, 2) if small else tracks
    metres = distance(small)
    frames, steering = sim.expert_frames(train_seeds(small), shifts=SHIFTS, distance=metres)
    centre = np.arange(len(steering)) % (1 + SHIFTS) == 0  # the expert's own frames first, then the shifted views
    order = np.concatenate([np.flatnonzero(centre), np.flatnonzero(~centre)])
    frames, steering = frames[order], steering[order]
    val_frames, val_steering = sim.expert_frames(list(VAL_SEEDS[:1] if small else VAL_SEEDS), distance=metres)
    drives = torch.stack([torch.arange(eval_seed, eval_seed + tracks), torch.full((tracks,), int(metres))], dim=1)
    return Splits(train=(torch.from_numpy(frames), torch.from_numpy(steering)),
                  val=(torch.from_numpy(val_frames), torch.from_numpy(val_steering)),
                  test=(drives, drives.clone()))


def staged_pipelines(seed: int = 0, small: bool = False) -> dict:
    """Lane detection -> a Kalman filter on the centre line -> pursuit, tuned on training tracks:
    on the painted markings alone (what the textbook pipeline sees), and with the road's own
    edges (asphalt against verge) as a further cue, which carries it over worn paint."""
    from endtoend.recipes.drive_staged import StagedDriver

    tune = list(TUNE_SEEDS[:1] if small else TUNE_SEEDS)
    return {f"lane {cue} + Kalman + pursuit": StagedDriver(tune, seed=seed, distance=distance(small), road_edges=edges,
                                                            quick=small)
            for cue, edges in (("markings", False), ("markings and road edges", True))}


def build_model(small: bool = False) -> nn.Module:
    return SteeringNet(width=8 if small else 24)


def training(small: bool = False) -> dict:
    return dict(loss="mse", metrics=["mae"], epochs=1 if small else 6, batch_size=64, lr=2e-3, weight_decay=1e-4,
                channels_last=False)  # channels_last did not pay here (benchmarks/layout.py)


def variants(small: bool = False) -> dict:
    """"BC, no shifted views": behaviour cloning on the expert's own frames only (the ablation
    that shows why the shifted views matter: errors compound in states the expert never
    visits). "DAgger": the same network from those same frames, trained fewer epochs per round,
    then DAGGER_ROUNDS rounds of driving, labelling and training on."""
    dagger = {**training(small), "epochs": 1 if small else 3, "rounds": 1 if small else DAGGER_ROUNDS}
    return {"BC, no shifted views": (lambda: build_model(small), training(small)),
            "DAgger": (lambda: build_model(small), dagger)}


def variant_data(variant: str, train: tuple, small: bool) -> tuple:
    """Both variants train on the expert's own frames: the first third of the training split
    (load_data puts them before the shifted views)."""
    count = max(len(train[1]) // (1 + SHIFTS), 1)
    return train[0][:count], train[1][:count]


def aggregate(model: nn.Module, train: tuple, round: int, small: bool) -> tuple:
    """One DAgger round: the network drives every training track (the expert taking over when
    it leaves the road), the expert labels each frame the car saw, and those frames join the
    training set."""
    _, (frames, labels) = sim.drive(train_seeds(small), NetworkPolicy(model), record=True, noise_seed=round + 1,
                                    distance=distance(small))
    return (torch.cat([train[0], torch.from_numpy(frames)]), torch.cat([train[1], torch.from_numpy(labels)]))


def predict(model: nn.Module, inputs: torch.Tensor):
    """Drives ((K, 2): track seed, metres) -> the network's closed-loop drives on them; camera
    frames (N, 3, 48, 96) -> their steering (what `e2e predict` asks)."""
    if inputs.dim() == 2:
        seeds, metres = sim.drives_of(inputs)
        return sim.evaluate_policy(seeds, NetworkPolicy(model), distance=metres)
    return model(inputs)


def evaluate(drives: list, targets) -> dict[str, float]:
    """Closed-loop scores over the evaluation tracks, and the open-loop error on the expert's
    frames of the same tracks (a good open-loop score does not make a good driver)."""
    if not isinstance(drives, list) or not all(isinstance(d, sim.DriveRecord) for d in drives):
        raise UsageError("drive's evaluate() scores closed-loop drives (endtoend.sim.drive.DriveRecord), one per "
                         "evaluation track; a pipeline's predict(track seeds) must return them")
    lateral = np.concatenate([d.lateral_errors for d in drives])
    kilometres = sum(d.distance for d in drives) / 1000
    open_loop = np.concatenate([d.open_loop_errors for d in drives])
    steps = sum(len(d.commands) for d in drives)
    return {"completion": float(np.mean([d.completed for d in drives])),
            "mean_abs_lateral_error_m": float(lateral.mean()) if lateral.size else float("nan"),
            "distance_before_failure_m": float(np.mean([d.distance_before_failure for d in drives])),
            "interventions_per_km": float(sum(d.interventions for d in drives) / max(kilometres, 1e-9)),
            "open_loop_steering_mae": float(open_loop.mean()) if open_loop.size else float("nan"),
            "policy_ms_per_frame": float(1000 * sum(d.policy_seconds for d in drives) / max(steps, 1))}


def read_input(path: str) -> torch.Tensor:
    """A camera frame: any image, resized to 48x96 RGB."""
    return read_rgb(path, (HEIGHT, WIDTH))


def format_prediction(prediction, output) -> dict:
    return {"steering": round(float(prediction), 5)}


def report_figure(inputs, targets, predictions):
    from endtoend.recipes.drive_report import drives_figure

    return drives_figure(predictions)


def report_animation(inputs, targets, predictions) -> dict:
    from endtoend.recipes.drive_report import drive_frames

    return {name: drive_frames(name, drives[0]) for name, drives in predictions.items()
            if drives and drives[0].frames is not None}
