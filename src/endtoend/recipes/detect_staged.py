"""The staged detector of the detect recipe: an R-CNN-style chain of classic parts.

1. Region proposals per image (scikit-image): the boxes of the foreground's connected
   components and of those components split at colour edges (both from the segment recipe's
   tuned `foreground` / `split_components`), of adjacent split parts merged pairwise
   (selective-search style: an object cut in two by stripes or an edge comes back whole), and
   of Felzenszwalb's graph segments (a second opinion where the foreground threshold fails).
   Near-duplicates dropped, at most `max_proposals` per image.
2. Features of each proposal's crop (a one-pixel border, plus an optional margin; tuned: none),
   resized to 32x32: HOG (colour gradients), the crop's foreground mask at 8x8 (the
   silhouette) and the box's size.
3. A scikit-learn classifier over {background, circle, square, triangle}, trained R-CNN style:
   proposals with IoU >= 0.5 to a truth box take its class, those under 0.3 are background
   (subsampled to `background_ratio` x the positives), those in between are dropped, and the
   truth boxes themselves are added as positives.
4. R-CNN's class-specific box regression (Ridge on the same features, predicting the
   normalised offsets dx, dy, log dw, log dh to the matched truth box): occluded objects show
   less than their full box, and boxes are scored against the full box.
5. Each proposal is emitted as its best object class with that class's score (a proposal the
   classifier calls background keeps its low object score: cheap recall for mAP), then
   class-wise greedy NMS, best 20 per image.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.feature import hog
from skimage.measure import label as label_components
from skimage.measure import regionprops
from skimage.segmentation import felzenszwalb
from skimage.transform import resize
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from endtoend.data.shapes import SIZE
from endtoend.recipes.detect_boxes import pad_detections
from endtoend.recipes.segment import _as_images, foreground, split_components

CROP = 32      # proposals are resized to CROP x CROP before HOG
_PAD = 16      # the image is edge-padded by this much, so context margins never leave it
FEATURES = 3 * 3 * 4 * 9 + 8 * 8 + 2   # HOG (3x3 blocks of 2x2 cells, 9 bins), silhouette, size


# --- non-maximum suppression (torchvision.ops.nms semantics) -------------------------------------

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes (x2/y2 exclusive, so area is (x2-x1)*(y2-y1))."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes, scores, iou_threshold: float) -> np.ndarray:
    """Greedy NMS with torchvision.ops.nms's semantics: visit boxes by score, highest first (ties
    in input order), keep a box unless its IoU with an already kept box is > iou_threshold.
    Returns the kept indices (int64), highest score first. (torchvision itself cannot load here:
    its installable wheels are CUDA builds whose operators fail against the CPU torch.)"""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms got {len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes[order], boxes[order])
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for rank in range(len(order)):
        if not suppressed[rank]:
            kept.append(order[rank])
            suppressed |= overlaps[rank] > iou_threshold
    return np.array(kept, dtype=np.int64)


def batched_nms(boxes, scores, labels, iou_threshold: float) -> np.ndarray:
    """NMS within each label only (torchvision.ops.batched_nms): boxes are shifted by an offset
    per label larger than any coordinate, so boxes of different labels never overlap."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"batched_nms got {len(boxes)} boxes but {len(labels)} labels")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = (np.unique(labels, return_inverse=True)[1] * (np.abs(boxes).max() + 1))[:, None]
    return nms(boxes + offsets, scores, iou_threshold)


# --- 1. region proposals ------------------------------------------------------------------------

def _region_boxes(labelled: np.ndarray) -> list[tuple[int, int, int, int]]:
    return [(r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]) for r in regionprops(labelled)]


def _merged_pairs(parts: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Union boxes of every pair of split parts that touch (8-neighbourhood)."""
    boxes = {r.label: r.bbox for r in regionprops(parts)}
    merged = []
    for label in boxes:
        grown = ndimage.binary_dilation(parts == label, structure=np.ones((3, 3), bool))
        for other in np.unique(parts[grown]):
            if other > label:
                a, b = boxes[label], boxes[other]
                merged.append((min(a[1], b[1]), min(a[0], b[0]), max(a[3], b[3]), max(a[2], b[2])))
    return merged


def propose(image: np.ndarray, mask: np.ndarray, sigma: float = 0.5, edge_threshold: float = 20.0,
            felzenszwalb_scale: float | None = 200.0, max_proposals: int = 60) -> np.ndarray:
    """Float (n, 4) xyxy proposals for one (64, 64, 3) float image and its foreground mask, in
    priority order (components, split parts, merged pairs, Felzenszwalb segments), boxes with
    IoU > 0.9 to an earlier one dropped, at most `max_proposals`."""
    parts = split_components(image, mask, sigma, edge_threshold)
    boxes = _region_boxes(label_components(mask, connectivity=1)) + _region_boxes(parts) + _merged_pairs(parts)
    if felzenszwalb_scale is not None:
        segments = felzenszwalb(image / 255.0, scale=felzenszwalb_scale, sigma=sigma, min_size=20) + 1
        for x1, y1, x2, y2 in _region_boxes(segments):
            # Segments the size of the background are no object: objects are 10-24 px wide.
            if 4 <= x2 - x1 <= 30 and 4 <= y2 - y1 <= 30:
                boxes.append((x1, y1, x2, y2))
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    kept: list[int] = []
    for index in range(len(boxes)):
        if len(kept) == max_proposals:
            break
        if not kept or box_iou(boxes[index], boxes[kept]).max() <= 0.9:
            kept.append(index)
    return boxes[kept]


# --- 2. crop features ---------------------------------------------------------------------------

def crop_features(padded: np.ndarray, padded_mask: np.ndarray, boxes: np.ndarray, margin: float) -> np.ndarray:
    """One row per box: HOG of the box's crop grown by `margin` x its size on each side (the
    context an occluded part needs), resized to CROP x CROP; the crop's foreground at 8x8; the
    box's width and height over the image size. `padded`/`padded_mask` are edge-padded by _PAD."""
    rows = []
    for x1, y1, x2, y2 in boxes:
        grow_x, grow_y = margin * (x2 - x1) + 1, margin * (y2 - y1) + 1
        # Clipped to the padding: a large box's margin may reach past it (the crop is then off-centre).
        xs = slice(max(int(np.floor(x1 - grow_x)) + _PAD, 0), int(np.ceil(x2 + grow_x)) + _PAD)
        ys = slice(max(int(np.floor(y1 - grow_y)) + _PAD, 0), int(np.ceil(y2 + grow_y)) + _PAD)
        crop = resize(padded[ys, xs], (CROP, CROP), preserve_range=True, anti_aliasing=True)
        silhouette = resize(padded_mask[ys, xs], (8, 8), anti_aliasing=True)
        gradients = hog(crop, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), channel_axis=-1)
        rows.append(np.concatenate([gradients, silhouette.ravel(), [(x2 - x1) / SIZE, (y2 - y1) / SIZE]]))
    return np.array(rows) if rows else np.zeros((0, FEATURES))


# --- 4. box regression targets (R-CNN's parametrisation) ------------------------------------------

def _offsets(proposals: np.ndarray, truth: np.ndarray) -> np.ndarray:
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    tw, th = truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1]
    return np.stack([(truth[:, 0] + tw / 2 - proposals[:, 0] - pw / 2) / pw,
                     (truth[:, 1] + th / 2 - proposals[:, 1] - ph / 2) / ph, np.log(tw / pw), np.log(th / ph)], 1)


def _apply_offsets(proposals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    cx, cy = proposals[:, 0] + pw / 2 + offsets[:, 0] * pw, proposals[:, 1] + ph / 2 + offsets[:, 1] * ph
    w, h = pw * np.exp(np.clip(offsets[:, 2], -1, 1)), ph * np.exp(np.clip(offsets[:, 3], -1, 1))
    return np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), 0, SIZE)


# --- the detector -------------------------------------------------------------------------------

def _as_targets(targets, count: int) -> list[np.ndarray]:
    array = targets.cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    if array.ndim != 3 or array.shape[0] != count or array.shape[2] != 5:
        raise ValueError(f"targets must be ({count}, 5, 5) rows [label, x1, y1, x2, y2], got shape {array.shape}")
    return [scene[scene[:, 0] >= 0].astype(np.float64) for scene in array]


def _check_inputs(inputs) -> np.ndarray:
    shape = tuple(inputs.shape) if hasattr(inputs, "shape") else np.shape(inputs)
    if len(shape) != 4 or shape[1:] != (3, SIZE, SIZE):
        raise ValueError(f"inputs must be uint8 images of shape (N, 3, {SIZE}, {SIZE}), got shape {shape}")
    return _as_images(inputs)


class ProposalDetector:
    """Staged detector (see the module docstring): proposals -> crop features -> `classifier`
    (a scikit-learn estimator over 0 background, 1 circle, 2 square, 3 triangle) with R-CNN box
    regression -> class-wise NMS. Foreground and split settings are the segment recipe's tuned
    ones (sigma 0.5, luminance weight 0.75, threshold 55, edge threshold 20).

    Tuned on the validation split only (make_scenes(300, seed=12); never on test), by val
    mAP@0.5 (`coco_scores`), with the linear SVM unless said; differences under ~0.003 are within
    the grid's scatter, and such near-ties went to the higher mAP@[.5:.95], then the cheaper setting.
    Proposal recall at IoU >= 0.5 on val: components and split parts alone 0.973 (3.3 boxes per
    image); with Felzenszwalb segments at scale 50/100/200/400: 0.991/0.991/0.991/0.986 (20.8/
    9.8/5.8/4.5 boxes). Then, 1,000 training scenes, C 0.01, NMS 0.5, map50 (map) for
    felzenszwalb_scale x margin: None 0.963 (0.830) / 0.959 / 0.961 for margin 0 / 0.15 / 0.3;
    50: 0.971 / 0.982 (0.803) / 0.977; 100: 0.974 / 0.978 / 0.980; 200: 0.982 (0.844) / 0.980 /
    0.980 -> scale 200, margin 0 (the 50/0.15 best is 0.0005 higher in map50, 0.04 lower in mAP
    and 3.6x the proposals). C {0.001, 0.003, 0.01, 0.03, 0.1, 1}: 0.978, 0.979, 0.982, 0.982,
    0.981, 0.974; NMS IoU {0.2, 0.3, 0.4, 0.5, 0.6, 0.7} at C 0.01: 0.973, 0.983, 0.983, 0.982,
    0.979, 0.974 -> 0.3 (occluding neighbours of one class overlap little, duplicates much).
    Training scenes 500 / 1,000 / 2,000 at NMS 0.3: map50 0.976 / 0.983 / 0.980, map 0.808 /
    0.844 / 0.864 -> 2,000 (the better box fits). At 2,000: C {0.003, 0.01, 0.03}: 0.980,
    0.980, 0.983 -> 0.03; random forest (trees, min_samples_leaf) (100, 1) 0.9793,
    (100, 3) 0.9796, (200, 1) 0.9795, (200, 3) 0.9795 (map 0.864-0.867) -> 100 trees, leaf 3
    (half the fit time of 200); its NMS 0.2 (200 trees) 0.970, 0.4 (100 trees, leaf 1) 0.979.
    Not tuned: max_proposals 60 (val's most is 41), background_ratio 3 (R-CNN's), ridge_alpha 10, the
    HOG layout (8x8 cells, 2x2 blocks, 9 bins)."""

    def __init__(self, classifier, felzenszwalb_scale: float | None = 200.0, max_proposals: int = 60,
                 margin: float = 0.0, nms_threshold: float = 0.3, background_ratio: float = 3.0,
                 ridge_alpha: float = 10.0, seed: int = 0, n_jobs: int | None = -1):
        self.classifier = classifier
        self.felzenszwalb_scale, self.max_proposals, self.margin = felzenszwalb_scale, max_proposals, margin
        self.nms_threshold, self.background_ratio, self.ridge_alpha, self.seed = \
            nms_threshold, background_ratio, ridge_alpha, seed
        self.n_jobs = n_jobs  # processes for the per-scene work (joblib; -1: every core)

    def _proposals_and_features(self, image: np.ndarray, extra: np.ndarray | None = None):
        mask = foreground(image, 0.5, 0.75, 55.0)
        boxes = propose(image, mask, felzenszwalb_scale=self.felzenszwalb_scale, max_proposals=self.max_proposals)
        if extra is not None:
            boxes = np.concatenate([boxes, extra])
        padded = np.pad(image, ((_PAD, _PAD), (_PAD, _PAD), (0, 0)), mode="edge")
        padded_mask = np.pad(mask.astype(np.float64), _PAD)
        return boxes, crop_features(padded, padded_mask, boxes, self.margin)

    def _bare(self) -> ProposalDetector:
        """The same proposal and feature settings without the (fitted) classifier: what the
        worker processes need, cheap to send them."""
        return ProposalDetector(None, felzenszwalb_scale=self.felzenszwalb_scale, max_proposals=self.max_proposals,
                                margin=self.margin)

    def _training_rows(self, image: np.ndarray, objects: np.ndarray):
        """Features, classes (0 background) and regression targets of one training image's
        proposals, R-CNN's labelling: IoU >= 0.5 -> the object's class, < 0.3 -> background,
        in between dropped; the truth boxes are added as proposals (clean positives)."""
        boxes, rows = self._proposals_and_features(image, extra=objects[:, 1:])
        label, target = np.zeros(len(boxes), dtype=np.int64), np.zeros((len(boxes), 4))
        if len(objects):
            overlaps = box_iou(boxes, objects[:, 1:])
            best, match = overlaps.max(1), overlaps.argmax(1)
            label = np.where(best >= 0.5, objects[match, 0].astype(np.int64) + 1, np.where(best < 0.3, 0, -1))
            target = _offsets(boxes, objects[match, 1:])
        used = label >= 0
        return rows[used], label[used], target[used]

    def fit(self, inputs, targets) -> ProposalDetector:
        images = _check_inputs(inputs)
        truth = _as_targets(targets, len(images))
        if len(images) == 0:
            raise ValueError("ProposalDetector.fit needs at least one training scene, got none")
        found = _per_scene(self._bare()._training_rows, list(zip(images, truth)), self.n_jobs)
        features, classes, offsets = (np.concatenate(parts) for parts in zip(*found))
        if len(np.unique(classes)) < 2:
            raise ValueError("the training scenes gave proposals of fewer than two classes (no objects?)")
        # R-CNN's fixed background share: most proposals are background, and they are easy.
        rng = np.random.default_rng(self.seed)
        background = np.flatnonzero(classes == 0)
        limit = int(self.background_ratio * (classes > 0).sum())
        keep = np.sort(np.concatenate([np.flatnonzero(classes > 0),
                                       rng.permutation(background)[:max(limit, 1)]]))
        self.classifier.fit(features[keep], classes[keep])
        self.regressors = {}
        for label in range(1, 4):
            chosen = classes == label
            if chosen.any():
                self.regressors[label] = make_pipeline(StandardScaler(), Ridge(alpha=self.ridge_alpha)).fit(
                    features[chosen], offsets[chosen])
        return self

    def _class_scores(self, rows: np.ndarray) -> np.ndarray:
        """(n, 4) scores over the classifier's classes: probabilities, or a softmax of the
        decision values for estimators without predict_proba (LinearSVC)."""
        scores = np.zeros((len(rows), 4))
        if hasattr(self.classifier, "predict_proba"):
            values = self.classifier.predict_proba(rows)
        else:
            values = self.classifier.decision_function(rows)
            if values.ndim == 1:   # two classes: one margin, positive for classes_[1]
                values = np.column_stack([-values, values])
            values = np.exp(values - values.max(1, keepdims=True))
            values /= values.sum(1, keepdims=True)
        scores[:, self.classifier.classes_] = values
        return scores

    def _detections(self, boxes: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """(n, 6) detections `label, score, x1, y1, x2, y2` of one image's proposals."""
        if len(boxes) == 0:
            return np.zeros((0, 6))
        label = scores[:, 1:].argmax(1) + 1
        refined = boxes.copy()
        for value, regressor in self.regressors.items():
            chosen = label == value
            if chosen.any():
                refined[chosen] = _apply_offsets(boxes[chosen], regressor.predict(rows[chosen]))
        # A box regressed off the image is clipped to nothing: the proposal itself is a better guess.
        empty = (refined[:, 2] - refined[:, 0] < 1) | (refined[:, 3] - refined[:, 1] < 1)
        refined[empty] = boxes[empty]
        score = scores[np.arange(len(boxes)), label]
        kept = batched_nms(refined, score, label, self.nms_threshold)
        return np.column_stack([label[kept] - 1, score[kept], refined[kept]])

    def predict(self, inputs) -> np.ndarray:
        """(N, 20, 6) float32 detections (see detect_boxes.pad_detections)."""
        if not hasattr(self, "regressors"):
            raise ValueError("ProposalDetector.predict called before fit")
        found = _per_scene(self._bare()._proposals_and_features, [(image,) for image in _check_inputs(inputs)],
                           self.n_jobs)
        rows = np.concatenate([features for _, features in found] + [np.zeros((0, FEATURES))])
        # One classifier call for the whole split: a forest's per-call overhead dwarfs one image.
        scores = self._class_scores(rows) if len(rows) else np.zeros((0, 4))
        ends = np.cumsum([0] + [len(boxes) for boxes, _ in found])
        return pad_detections([self._detections(boxes, features, scores[start:end])
                               for (boxes, features), start, end in zip(found, ends[:-1], ends[1:])])


def _per_scene(work, arguments: list[tuple], n_jobs: int | None) -> list:
    """`work(*a)` for each `a`, across processes (joblib) when there are enough scenes to pay for
    it: proposals and HOG are per-scene Python, one core each. Results are in order and the same
    as a plain loop's; a handful of scenes (e2e predict, the latency timing) stay in-process."""
    if n_jobs == 1 or len(arguments) < 32:
        return [work(*a) for a in arguments]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs, batch_size=16)(delayed(work)(*a) for a in arguments)


def staged_pipelines(seed: int = 0) -> dict[str, ProposalDetector]:
    """The two staged rows of the detect recipe, their classifiers seeded by `seed`."""
    return {
        "region proposals + HOG + linear SVM + box regression + NMS": ProposalDetector(
            make_pipeline(StandardScaler(), LinearSVC(C=0.03, random_state=seed)), seed=seed),
        "region proposals + HOG + random forest + box regression + NMS": ProposalDetector(
            RandomForestClassifier(n_estimators=100, min_samples_leaf=3, random_state=seed, n_jobs=-1), seed=seed),
    }
