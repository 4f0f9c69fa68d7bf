"""Detect: boxes and classes of the objects in generated shapes-world scenes (endtoend.data.shapes).

Data: 64x64 RGB scenes of 0-5 flat-coloured circles, squares and upright triangles on a colour
gradient (striped on half of them) with pixel noise, objects overlapping by up to 30% (later
ones drawn over earlier ones). Targets: per scene a (5, 5) float tensor of rows
`label, x1, y1, x2, y2` (pixels, x2/y2 exclusive; the full shape's box even when occluded),
label -1 on unused rows (endtoend.recipes.detect_boxes). Train 3,000 scenes (seed 11), val 300
(seed 12), test 500 (seed 13), the segment recipe's seeds: the same scenes, another target.

Staged (R-CNN): region proposals -> HOG features of each resized crop -> a scikit-learn
classifier and box regressor -> non-maximum suppression (endtoend.recipes.detect_staged).
End-to-end (endtoend.recipes.detect_models): the row "end-to-end" is a DETR-style set
predictor (CNN backbone, dense proposals, 16 object queries refined by a transformer decoder,
a Hungarian-matched set loss on every layer, no NMS); the variant "end-to-end: YOLO-style grid
head" is a dense one-stage head whose targets are assigned by hand, cell by cell. Both are
decoded the same way, without NMS.

Scored by COCO mAP@0.5 (primary) and mAP@[.5:.95] over the whole test split (pycocotools).
`e2e predict RUN a.png` prints the objects found (score >= SCORE_THRESHOLD).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from endtoend.data import Splits, read_rgb
from endtoend.data.shapes import CLASSES, SIZE, make_scenes, stack_images
from endtoend.recipes.detect_boxes import coco_scores, pad_targets, unpad
from endtoend.recipes.detect_models import GridCriterion, GridDetector, SetDetector, SetLoss, decode

NAME = "detect"
DESCRIPTION = ("shapes-world detection (64x64, 3 classes): region proposals + HOG + SVM + NMS vs a DETR-style "
               "set predictor and a YOLO-style grid head, both without NMS")
METRIC = "map50"
HIGHER_IS_BETTER = True

# 3,000 training scenes: with the staged chains' fit on all of them, `e2e compare detect` stays
# under 15 minutes on 2 cores (4,000 took 21); the set model trains 12 epochs = 1,116 steps.
TRAIN, VAL, TEST = 3000, 300, 500
SMALL_TRAIN = 200
SEEDS = {"train": 11, "val": 12, "test": 13}
SCORE_THRESHOLD = 0.5  # what `e2e predict` reports; mAP ranks every detection, whatever its score
YOLO = "YOLO-style grid head"


def _split(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = make_scenes(count, seed=seed)
    return stack_images(scenes), pad_targets(scenes)


def load_data(small: bool = False) -> Splits:
    """Three independent draws of the shapes world, one seed per split; small keeps val and test."""
    return Splits(train=_split(SMALL_TRAIN if small else TRAIN, SEEDS["train"]),
                  val=_split(VAL, SEEDS["val"]), test=_split(TEST, SEEDS["test"]))


def staged_pipelines(seed: int = 0) -> dict:
    from endtoend.recipes.detect_staged import staged_pipelines as classic

    return classic(seed)


class MeanAP:
    """mAP@0.5 accumulator for fit's val/test metrics: detections and targets of the whole split,
    scored once by COCOeval."""

    higher_is_better = True

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.detections, self.targets = [], []

    def update(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> None:
        self.detections.append(decode(outputs).cpu())
        self.targets.append(targets.detach().cpu())

    def compute(self) -> float:
        return coco_scores(torch.cat(self.detections), torch.cat(self.targets))["map50"]


def build_model(small: bool = False) -> nn.Module:
    return SetDetector(width=16, dim=32, layers=2) if small else SetDetector()


def training(small: bool = False) -> dict:
    return dict(loss=SetLoss(), metrics={"map50": MeanAP()}, epochs=2 if small else 12, batch_size=32, lr=1e-3,
                weight_decay=1e-4, optimizer="adamw", schedule="one-cycle", clip=0.1, monitor="val_map50",
                channels_last=False)  # channels_last did not pay here (benchmarks/layout.py)


def variants(small: bool = False) -> dict:
    """More end-to-end rows: {name: (model factory, fit settings)}."""
    settings = dict(loss=GridCriterion(), metrics={"map50": MeanAP()}, epochs=2 if small else 8, batch_size=32,
                    lr=2e-3, weight_decay=1e-4, optimizer="adamw", schedule="one-cycle", clip=1.0,
                    monitor="val_map50", channels_last=False)  # channels_last did not pay here (benchmarks/layout.py)
    return {YOLO: (lambda: GridDetector(width=16 if small else 64), settings)}


def predict(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """(N, 20, 6) detections `label, score, x1, y1, x2, y2`, best first (no NMS)."""
    return decode(model(inputs)).cpu().numpy()


def evaluate(predictions, targets) -> dict[str, float]:
    """COCO mAP@0.5, mAP@[.5:.95] and each class's AP@0.5 over the whole split."""
    return coco_scores(predictions, targets)


# --- e2e predict: an image file in, its objects out ------------------------------------------------

def read_input(path: str) -> torch.Tensor:
    """One image file (any format and size Pillow opens) as a (3, 64, 64) uint8 RGB tensor;
    boxes come back in the 64x64 frame."""
    return read_rgb(path, SIZE)


def format_prediction(prediction, output) -> dict:
    """The objects scored at least SCORE_THRESHOLD: label, box xyxy in pixels, score."""
    rows = np.asarray(prediction)
    return {"objects": [{"label": CLASSES[int(label)], "box": [round(float(v), 2) for v in box],
                         "score": round(float(score), 4)}
                        for label, score, *box in rows if label >= 0 and score >= SCORE_THRESHOLD]}


COLOURS = {"circle": "#e64d40", "square": "#4099f2", "triangle": "#f2cc33"}


def report_figure(inputs, targets, predictions, count: int = 4):
    """The first `count` test scenes with at least two objects: the truth boxes, then each
    pipeline's detections scored at least SCORE_THRESHOLD (its name over the column)."""
    import textwrap

    from matplotlib import patheffects
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    outline = [patheffects.withStroke(linewidth=2.8, foreground="black")]  # visible on any background
    images = inputs.cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    truth = unpad(targets)
    busy = [i for i, rows in enumerate(truth) if len(rows) >= 2]
    shown = (busy + [i for i in range(len(truth)) if i not in set(busy)])[:count]
    columns = [("truth", None)] + [(name, unpad(value)) for name, value in predictions.items()]
    figure = Figure(figsize=(1.9 * len(columns), 1.9 * len(shown) + 0.9), layout="constrained")
    axes = figure.subplots(len(shown), len(columns), squeeze=False)
    for row, index in enumerate(shown):
        for column, (title, found) in enumerate(columns):
            ax = axes[row, column]
            ax.imshow(np.moveaxis(images[index], 0, -1).astype(np.uint8))
            for box in truth[index] if found is None else found[index]:
                if found is not None and box[1] < SCORE_THRESHOLD:
                    continue
                label, (x1, y1, x2, y2) = int(box[0]), (float(v) for v in box[-4:])
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, linewidth=1.3,
                                       edgecolor=COLOURS[CLASSES[label]], path_effects=outline))
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(textwrap.fill(title, 24), fontsize=7)
        axes[row, 0].set_ylabel(f"test {index}", fontsize=7)
    figure.legend(handles=[Patch(edgecolor=colour, fill=False, label=name) for name, colour in COLOURS.items()],
                  loc="outside lower center", ncol=len(COLOURS), fontsize=7)
    return figure
