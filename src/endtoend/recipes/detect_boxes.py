"""Boxes for the detect recipe: the padded arrays every detect pipeline reads and writes, and
their COCO-style scoring.

Targets, per scene, in one float32 tensor (N, 5, 5): rows `label, x1, y1, x2, y2` (label 0
circle, 1 square, 2 triangle; boxes xyxy in pixels, x2/y2 exclusive), label -1 on unused rows
(a scene holds at most five objects). Tensors, not lists of dicts, so that `fit` can batch and
shuffle them like any other target.

Detections, per scene, in one float32 array (N, MAX_DETECTIONS, 6): rows
`label, score, x1, y1, x2, y2`, best score first, label -1 on unused rows. Every pipeline,
staged or end-to-end, predicts this form, so one `evaluate` scores them all.

mAP is pycocotools' COCOeval (the reference COCO evaluation, and the backend torchmetrics'
MeanAveragePrecision calls). torchmetrics' wrapper itself needs torchvision, and the only
torchvision wheels pip can install here are CUDA builds whose operators do not load against
the CPU torch (`operator torchvision::nms does not exist`), so this calls COCOeval directly,
with the settings torchmetrics passes it (bbox, IoU 0.50:0.05:0.95, maxDets 1/10/100).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from endtoend.data.shapes import CLASSES, Scene

MAX_OBJECTS = 5
MAX_DETECTIONS = 20


def pad_targets(scenes: list[Scene]) -> torch.Tensor:
    """The scenes' labels and boxes as one (N, 5, 5) float32 tensor (label -1 on unused rows)."""
    out = torch.full((len(scenes), MAX_OBJECTS, 5), -1.0)
    for index, scene in enumerate(scenes):
        count = len(scene.labels)
        out[index, :count, 0] = scene.labels.float()
        out[index, :count, 1:] = scene.boxes
    return out


def unpad(rows) -> list[np.ndarray]:
    """Per scene, the used rows (label >= 0) of a padded (N, K, D) array or tensor."""
    rows = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    return [scene[scene[:, 0] >= 0] for scene in rows]


def pad_detections(per_scene: list[np.ndarray]) -> np.ndarray:
    """Per-scene detections (n, 6) `label, score, x1, y1, x2, y2`, sorted by score and cut to
    MAX_DETECTIONS, as one (N, MAX_DETECTIONS, 6) float32 array."""
    out = np.full((len(per_scene), MAX_DETECTIONS, 6), -1.0, dtype=np.float32)
    out[:, :, 1:] = 0.0
    for index, detections in enumerate(per_scene):
        detections = np.asarray(detections, dtype=np.float32).reshape(-1, 6)
        detections = detections[np.argsort(-detections[:, 1], kind="stable")][:MAX_DETECTIONS]
        out[index, :len(detections)] = detections
    return out


def coco_scores(predictions, targets) -> dict[str, float]:
    """mAP@0.5 (`map50`), mAP@[.5:.95] (`map`) and each class's AP@0.5 (`ap50_circle`, ...),
    over the whole split, by COCOeval. `predictions` (N, K, 6) detections, `targets` (N, 5, 5)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth, found = unpad(targets), unpad(predictions)
    if len(truth) != len(found):
        raise ValueError(f"detections for {len(found)} scenes, targets for {len(truth)}")
    images = [{"id": i, "width": 64, "height": 64} for i in range(len(truth))]
    objects = [(i, row) for i, scene in enumerate(truth) for row in scene]
    annotations = [{"id": number, "image_id": i, "category_id": int(row[0]), "bbox": _xywh(row[1:5]),
                    "area": _area(row[1:5]), "iscrowd": 0} for number, (i, row) in enumerate(objects, start=1)]
    detections = [{"image_id": i, "category_id": int(row[0]), "bbox": _xywh(row[2:6]), "score": float(row[1])}
                  for i, scene in enumerate(found) for row in scene]
    if not annotations:
        raise ValueError("the targets hold no objects, so there is no precision to measure")
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and a table
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations,
                          "categories": [{"id": i, "name": name} for i, name in enumerate(CLASSES)]}
        ground.createIndex()
        result = ground.loadRes(detections) if detections else COCO()
        if not detections:
            result.dataset = {"images": images, "annotations": [], "categories": ground.dataset["categories"]}
            result.createIndex()
        evaluation = COCOeval(ground, result, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    scores = {"map50": _clean(evaluation.stats[1]), "map": _clean(evaluation.stats[0])}
    # precision: (IoU thresholds, recall points, classes, area ranges, maxDets); IoU 0.5, all areas, 100 dets
    precision = evaluation.eval["precision"][0, :, :, 0, -1]
    for column, name in enumerate(CLASSES):
        values = precision[:, column]
        scores[f"ap50_{name}"] = _clean(values[values > -1].mean() if (values > -1).any() else -1)
    return scores


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _area(box) -> float:
    return max(float(box[2] - box[0]), 0.0) * max(float(box[3] - box[1]), 0.0)


def _clean(value: float) -> float:
    """COCOeval reports -1 where there was nothing to measure; 0 is the honest score there for a
    class present in the truth, and the class absent from the truth is not scored."""
    return max(float(value), 0.0)
