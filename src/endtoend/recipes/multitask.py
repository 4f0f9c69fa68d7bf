"""Multitask: one model, one objective, three tasks on shapes-world scenes (endtoend.data.shapes).

Data: segment's scenes (the same seeds: train 11, val 12, test 13; 2,000 training scenes, 200
with --small; val 300, test 500, independent of small). Per scene, three targets:
  classes   which of circle, square, triangle are present (multi-label, 3 binary values)
  count     how many objects are visible (0-5)
  mask      the (64, 64) class mask, 0 background, 1..3 the shapes (as segment's)
"Visible" means at least one pixel in the mask: the generator bounds an object's overlap with
each earlier one by 30% of the *new* object's area, so a larger later object can cover a smaller
earlier one entirely (28 of the 7,653 objects of 3,000 scenes of seed 11, 0.4%; 39 more show
fewer than 20 pixels). Such an object is in no pixel, so it is not counted, and its class is
present only if another object of that class shows: classes, count and mask agree. `fit`'s
fast path batches one tensor of targets, so the three are packed in one int64 row per scene
(`pack`, `unpack`): 3 class columns, the count, the mask's 4,096 pixels. Inputs: raw uint8
(N, 3, 64, 64) pixels, scaled in the networks.

Staged side, "separately optimised modules": three networks, one per task, each trained alone
by endtoend.fit on its own loss, with the multi-task backbone's widths (the classes and count
networks keep only the encoder, which is all their heads read). Their outputs are combined
into the multi-task model's prediction form, so one `evaluate` scores every row.
End-to-end: one shared U-Net backbone and three heads (multitask_models.py) trained by one
`endtoend.Objective` over the three losses (BCE for classes, MSE for the count, segment's
cross-entropy + soft Dice for the mask): the row `end-to-end` weighs them equally (fixed weights
1), `end-to-end: uncertainty weighting` learns the weights (Kendall et al. 2018), `end-to-end:
GradNorm` balances the terms' gradient norms on the last shared layer (Chen et al. 2018).

Scored per task: macro F1 of the present classes (probability >= 0.5), count MAE and exact
accuracy of the rounded count, mIoU of the mask (segment's). The ranking metric
`mean_task_score` is the mean of macro F1, mIoU and count accuracy: one number per task, each in
[0, 1] with higher better, so no task outweighs another by its units (MAE, unbounded, is
reported beside it). `e2e predict` reads an image file and prints the classes present, the count
and the mask.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from endtoend.data import Splits, read_rgb
from endtoend.data.shapes import CLASSES as SHAPES
from endtoend.data.shapes import SIZE, Scene, make_scenes, shape_mask, stack_images
from endtoend.objective import Objective
from endtoend.recipes import segment
from endtoend.recipes.multitask_models import TASKS, MultiTaskNet, SingleTaskNet
from endtoend.train import fit as train_network
from endtoend.train.evaluate import eval_mode
from endtoend.train.rng import seed_everything

NAME = "multitask"
DESCRIPTION = ("shapes-world classes present + object count + mask: three single-task networks vs one "
               "shared backbone with three heads under fixed, uncertainty and GradNorm weighting")
METRIC = "mean_task_score"
HIGHER_IS_BETTER = True

# Sized for one `e2e compare` (six trainings: three single-task networks, three multi-task rows)
# in about 8 minutes on 2 cores: 2,000 scenes x 8 epochs = 496 steps each, at segment's --small
# U-Net widths (a step of all six costs 2.2 of segment's full U-Net steps, measured).
TRAIN, VAL, TEST = 2000, 300, 500
SMALL_TRAIN = 200
SEEDS = segment.SEEDS            # segment's (and detect's) scenes
MAX_OBJECTS = 5
WIDTHS, SMALL_WIDTHS = (8, 16, 32), (4, 8, 16)

# One packed target row per scene (int64; predictions float32 in the same layout, with class
# probabilities and the count estimate): present classes, count, then the mask's pixels.
CLASS_COLUMNS, COUNT_COLUMN, MASK_START = slice(0, len(SHAPES)), len(SHAPES), len(SHAPES) + 1


def pack(classes, count, mask):
    """(N, 3) classes, (N,) count and (N, 64, 64) mask -> one (N, 4 + 4096) row per scene."""
    return torch.cat([classes.reshape(len(mask), -1), count.reshape(-1, 1), mask.reshape(len(mask), -1)], 1)


def unpack(rows) -> dict:
    """Packed rows (a tensor or an array, (N, 4100) or one (4100,) row) -> {"classes" (N, 3),
    "count" (N,), "mask" (N, 64, 64)}: views, in the rows' own type and dtype."""
    rows = rows[None] if rows.ndim == 1 else rows
    return {"classes": rows[:, CLASS_COLUMNS], "count": rows[:, COUNT_COLUMN],
            "mask": rows[:, MASK_START:].reshape(len(rows), SIZE, SIZE)}


def visible_objects(scene: Scene) -> int:
    """The scene's objects that show at least one pixel: each full shape (rebuilt from its box,
    which the spec makes exact) less everything drawn after it."""
    covered, visible = np.zeros((SIZE, SIZE), dtype=bool), 0
    for (x1, y1, x2, _), label in reversed(list(zip(scene.boxes.int().tolist(), scene.labels.tolist()))):
        full = shape_mask(SHAPES[label], x1, y1, x2 - x1)
        visible += bool((full & ~covered).any())
        covered |= full
    return visible


def scene_targets(scenes: list[Scene]) -> torch.Tensor:
    """The packed targets of the scenes: classes present in the mask, visible objects, mask."""
    masks = torch.stack([scene.mask for scene in scenes])
    classes = torch.stack([(masks == k + 1).flatten(1).any(1) for k in range(len(SHAPES))], 1).long()
    counts = torch.tensor([visible_objects(scene) for scene in scenes], dtype=torch.int64)
    return pack(classes, counts, masks)


def _split(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = make_scenes(count, seed=seed)
    return stack_images(scenes), scene_targets(scenes)


def load_data(small: bool = False) -> Splits:
    """segment's three seeded draws, with the three tasks' targets; small keeps val and test."""
    return Splits(train=_split(SMALL_TRAIN if small else TRAIN, SEEDS["train"]),
                  val=_split(VAL, SEEDS["val"]), test=_split(TEST, SEEDS["test"]))


# --- the loss terms, one per task: each reads its own head and its own columns ------------------

def classes_loss(outputs: dict, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs["classes"], unpack(targets)["classes"].float())


def count_loss(outputs: dict, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs["count"], unpack(targets)["count"].float())


def mask_loss(outputs: dict, targets: torch.Tensor) -> torch.Tensor:
    return segment.dice_cross_entropy(outputs["mask"], unpack(targets)["mask"])


TERMS = {"classes": classes_loss, "count": count_loss, "mask": mask_loss}


def to_predictions(outputs: dict) -> torch.Tensor:
    """Network outputs (all three heads) -> packed float32 predictions on the host: class
    probabilities, the count estimate, the mask's argmax."""
    mask = outputs["mask"].max(1).indices   # the argmax; argmax(1) over channels is 8x slower on CPU
    return pack(outputs["classes"].float().sigmoid(), outputs["count"].float(), mask.float()).detach().cpu()


# --- staged: three single-task networks, each trained alone ----------------------------------------

class SingleTaskNetworks:
    """One network per task (`SingleTaskNet`: the multi-task backbone's widths, one head), each
    trained by its own `endtoend.fit` on its own loss alone, with the end-to-end rows' settings;
    `predict` runs all three and packs their outputs as the multi-task model's. Each starts from
    the pipeline's seed, as the multi-task model does from the run's."""

    def __init__(self, widths: tuple[int, int, int], settings: dict, seed: int):
        self.widths, self.settings, self.seed = widths, settings, seed
        self.networks: dict[str, nn.Module] = {}

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> SingleTaskNetworks:
        for task in TASKS:
            seed_everything(self.seed)
            network = SingleTaskNet(task, self.widths)
            # audit off: these are the multi-task rows' layers, which compare's own fit audits.
            self.networks[task] = train_network(network, (inputs, targets), loss=TERMS[task], seed=self.seed, progress=False,
                                      audit="off", **self.settings).model
        return self

    def predict(self, inputs: torch.Tensor) -> np.ndarray:
        chunks, batch = [], 4 * self.settings["batch_size"]
        for start in range(0, len(inputs), batch):
            outputs = {}
            for network in self.networks.values():
                device = next(network.parameters()).device
                with eval_mode(network), torch.inference_mode():
                    outputs.update(network(inputs[start:start + batch].to(device)))
            chunks.append(to_predictions(outputs))
        return torch.cat(chunks).numpy()


def _optimisation(small: bool) -> dict:
    """What every network here trains with, single-task or not: segment's optimiser and
    schedule, over fewer steps (TRAIN's note)."""
    return dict(epochs=2 if small else 8, batch_size=32, lr=1e-2, weight_decay=1e-4, optimizer="adamw",
                schedule="one-cycle", channels_last=False)  # channels_last did not pay here (benchmarks/layout.py)


def staged_pipelines(seed: int = 0, small: bool = False) -> dict:
    return {"single-task networks (one per task)": SingleTaskNetworks(SMALL_WIDTHS if small else WIDTHS,
                                                                      _optimisation(small), seed)}


# --- end-to-end: one backbone, three heads, one Objective ------------------------------------------

def build_model(small: bool = False) -> nn.Module:
    return MultiTaskNet(SMALL_WIDTHS if small else WIDTHS)


class TaskScore:
    """One of evaluate's scores over a whole split, for fit's val/test metrics: each batch's
    packed predictions and targets are kept (the masks as uint8: 4 KB a scene) and `evaluate`
    scores them all at once, so the value is exactly evaluate's on the same predictions."""

    def __init__(self, name: str):
        self.name, self.higher_is_better = name, name != "count_mae"
        self.reset()

    def reset(self) -> None:
        self.heads: list[torch.Tensor] = []    # class probabilities and count estimate (float32)
        self.masks: list[torch.Tensor] = []    # predicted masks (uint8)
        self.targets: list[torch.Tensor] = []  # packed targets (uint8: every value is 0-5)

    def update(self, outputs: dict, targets: torch.Tensor) -> None:
        predictions = to_predictions(outputs)
        self.heads.append(predictions[:, :MASK_START])
        self.masks.append(predictions[:, MASK_START:].to(torch.uint8))
        self.targets.append(targets.to(torch.uint8).cpu())

    def compute(self) -> float:
        predictions = torch.cat([torch.cat(self.heads), torch.cat(self.masks).float()], 1)
        return evaluate(predictions.numpy(), torch.cat(self.targets).numpy())[self.name]


FIT_METRICS = ("mean_task_score", "macro_f1", "count_mae", "miou")


def _settings(small: bool, weighting: str) -> dict:
    """fit settings around a fresh Objective over the three terms: nothing learned in one run
    (uncertainty's log-variances, GradNorm's weights and initial losses) reaches another."""
    return dict(loss=Objective(dict(TERMS), weighting), metrics={name: TaskScore(name) for name in FIT_METRICS},
                monitor="val_mean_task_score", **_optimisation(small))


def training(small: bool = False) -> dict:
    """Fixed equal weights: the total is the plain sum of the three losses."""
    return _settings(small, "fixed")


def variants(small: bool = False) -> dict:
    """The learned weightings. run.py calls variants() anew for every training and uses that
    call's factory with that call's settings, so GradNorm's factory binds the objective it was
    made with to the last shared layer of the model it builds (the objective exists before the
    model; Objective.bind_shared_parameters)."""
    gradnorm = _settings(small, "gradnorm")

    def build_for_gradnorm() -> nn.Module:
        model = build_model(small)
        gradnorm["loss"].bind_shared_parameters(model.shared_layer().parameters())
        return model

    return {"uncertainty weighting": (lambda: build_model(small), _settings(small, "uncertainty")),
            "GradNorm": (build_for_gradnorm, gradnorm)}


def predict(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Packed float32 predictions (N, 4100): class probabilities, count estimate, mask."""
    return to_predictions(model(inputs)).numpy()


# --- scoring: the same for every row ---------------------------------------------------------------

def _classes_and_count(probabilities, present, estimate, count) -> dict[str, float]:
    predicted, actual = np.asarray(probabilities) >= 0.5, np.asarray(present) > 0.5
    estimate, count = np.asarray(estimate, dtype=np.float64), np.asarray(count, dtype=np.float64)
    rounded = np.clip(np.rint(estimate), 0, MAX_OBJECTS)
    return {"macro_f1": float(f1_score(actual, predicted, average="macro", zero_division=0)),
            "count_mae": float(np.abs(estimate - count).mean()), "count_accuracy": float((rounded == count).mean())}


def _with_mean_task_score(scores: dict[str, float]) -> dict[str, float]:
    return {"mean_task_score": (scores["macro_f1"] + scores["miou"] + scores["count_accuracy"]) / 3, **scores}


def evaluate(predictions, targets) -> dict[str, float]:
    """Per task over the whole split: macro F1 of the present classes (sklearn), count MAE and
    rounded-count accuracy, segment's mIoU of the mask; and mean_task_score, the mean of macro F1,
    mIoU and count accuracy. (Per-class scores are left out: five columns keep the table legible.)"""
    predicted, truth = unpack(np.asarray(predictions)), unpack(np.asarray(targets))
    if predicted["mask"].shape != truth["mask"].shape:
        raise ValueError(f"predictions of shape {np.shape(predictions)} for targets of shape {np.shape(targets)}")
    scores = _classes_and_count(predicted["classes"], truth["classes"], predicted["count"], truth["count"])
    scores["miou"] = segment.evaluate(predicted["mask"], truth["mask"])["miou"]
    return _with_mean_task_score(scores)


# --- e2e predict: an image file in, its classes, count and mask out ----------------------------------

def read_input(path: str) -> torch.Tensor:
    """One image file (any format and size Pillow opens) as a (3, 64, 64) uint8 RGB tensor."""
    return read_rgb(path, SIZE)


def format_prediction(prediction, output) -> dict:
    """The classes present (probability >= 0.5), the rounded count and the 64x64 mask of class
    ids (0 background, 1 circle, 2 square, 3 triangle)."""
    fields = unpack(np.asarray(prediction))
    count = int(np.clip(np.rint(fields["count"][0]), 0, MAX_OBJECTS))
    return {"classes": [name for name, p in zip(SHAPES, fields["classes"][0]) if p >= 0.5], "count": count,
            "mask": fields["mask"][0].astype(np.int64).tolist()}


def report_figure(inputs, targets, predictions, runs=None):
    """Each row's per-task scores as bars, the learned task weights over training (from `runs`,
    {row: run directory}, when given), and a few test scenes with every row's mask and count."""
    from endtoend.recipes import multitask_report

    return multitask_report.figure(inputs, targets, predictions, runs)
