"""The detect recipe's staged detector: NMS against a brute-force reference, proposal recall,
and fit/predict on a few scenes. Small configurations only: fast."""

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from endtoend.data.shapes import make_scenes, stack_images
from endtoend.recipes.detect_boxes import pad_targets
from endtoend.recipes.detect_staged import ProposalDetector, batched_nms, box_iou, nms, propose, staged_pipelines
from endtoend.recipes.segment import _as_images, foreground


def _random_boxes(rng, count):
    corner = rng.uniform(0, 50, size=(count, 2))
    size = rng.uniform(2, 20, size=(count, 2))
    return np.concatenate([corner, corner + size], axis=1)


def _iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference_nms(boxes, scores, threshold):
    """torchvision.ops.nms by its definition, one box at a time."""
    kept = []
    for index in sorted(range(len(boxes)), key=lambda i: -scores[i]):
        if all(_iou(boxes[index], boxes[other]) <= threshold for other in kept):
            kept.append(index)
    return kept


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.8])
def test_nms_equals_the_brute_force_reference(seed, threshold):
    rng = np.random.default_rng(seed)
    boxes, scores = _random_boxes(rng, 60), rng.random(60)
    assert nms(boxes, scores, threshold).tolist() == _reference_nms(boxes, scores, threshold)


def test_nms_of_no_boxes_is_empty_and_mismatched_lengths_are_refused():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="3 boxes but 2 scores"):
        nms(np.ones((3, 4)), np.ones(2), 0.5)


def test_box_iou_matches_a_hand_computation():
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)


def test_batched_nms_never_suppresses_across_classes():
    rng = np.random.default_rng(7)
    boxes, scores, labels = _random_boxes(rng, 80), rng.random(80), rng.integers(0, 3, 80)
    kept = batched_nms(boxes, scores, labels, 0.3)
    expected = [i for label in range(3) for i in np.flatnonzero(labels == label)[nms(boxes[labels == label],
                                                                                    scores[labels == label], 0.3)]]
    assert sorted(kept.tolist()) == sorted(expected)
    assert np.all(np.diff(scores[kept]) <= 0)           # score order, as torchvision returns them
    same = np.array([[0, 0, 10, 10]] * 3, dtype=float)   # one box, three labels: all three stay
    assert sorted(batched_nms(same, [0.9, 0.8, 0.7], [0, 1, 2], 0.5).tolist()) == [0, 1, 2]


def test_proposals_cover_most_truth_boxes():
    # Measured: 30 of 31 truth boxes (0.97) of these 20 scenes at IoU >= 0.5; val (300 scenes): 0.99.
    scenes = make_scenes(20, seed=101)
    found = total = 0
    for image, scene in zip(_as_images(stack_images(scenes)), scenes):
        boxes = propose(image, foreground(image, 0.5, 0.75, 55.0))
        assert len(boxes) <= 60 and np.all((boxes[:, 2:] > boxes[:, :2]))
        if len(scene.boxes):
            found += int((box_iou(scene.boxes.numpy(), boxes).max(1) >= 0.5).sum())
            total += len(scene.boxes)
    assert total == 31 and found / total >= 0.85, (found, total)


@pytest.fixture(scope="module")
def fitted():
    scenes = make_scenes(40, seed=102)
    detector = ProposalDetector(make_pipeline(StandardScaler(), LinearSVC(C=0.03, random_state=0)))
    return detector.fit(stack_images(scenes), pad_targets(scenes))


def test_fit_and_predict_give_sorted_valid_detections(fitted):
    held = make_scenes(6, seed=103)
    out = fitted.predict(stack_images(held))
    assert out.shape == (6, 20, 6) and out.dtype == np.float32
    assert set(np.unique(out[:, :, 0])) <= {-1.0, 0.0, 1.0, 2.0}
    assert np.all(np.diff(out[:, :, 1], axis=1) <= 0)
    used = out[out[:, :, 0] >= 0]
    assert len(used) > 0 and np.all(used[:, 2:] >= 0) and np.all(used[:, 2:] <= 64)
    assert np.all(used[:, 4:] > used[:, 2:4])            # x2 > x1, y2 > y1


def test_predict_on_scenes_without_objects(fitted):
    flat = np.full((2, 3, 64, 64), 128, dtype=np.uint8)    # nothing to propose at all
    out = fitted.predict(flat)
    assert out.shape == (2, 20, 6) and np.all(out[:, :, 0] == -1)
    assert fitted.predict(np.zeros((0, 3, 64, 64), dtype=np.uint8)).shape == (0, 20, 6)


def test_bad_inputs_are_refused_with_the_shape_named():
    detector = staged_pipelines(0)["region proposals + HOG + linear SVM + box regression + NMS"]
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\), got shape \(2, 64, 64\)"):
        detector.fit(np.zeros((2, 64, 64), dtype=np.uint8), np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match=r"targets must be \(2, 5, 5\)"):
        detector.fit(np.zeros((2, 3, 64, 64), dtype=np.uint8), np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="at least one training scene"):
        detector.fit(np.zeros((0, 3, 64, 64), dtype=np.uint8), np.zeros((0, 5, 5)))
    with pytest.raises(ValueError, match="before fit"):
        detector.predict(np.zeros((1, 3, 64, 64), dtype=np.uint8))


def test_the_per_scene_work_across_processes_gives_the_in_process_detections(fitted):
    """joblib only spreads the proposals and features over cores: 40 scenes (enough to take the
    parallel path) predict the same as one process."""
    held, original = stack_images(make_scenes(40, seed=104)), fitted.n_jobs
    try:
        fitted.n_jobs = 1
        alone = fitted.predict(held)
        fitted.n_jobs = 2
        assert np.array_equal(fitted.predict(held), alone)
    finally:
        fitted.n_jobs = original
