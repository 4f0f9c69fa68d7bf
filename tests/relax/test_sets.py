import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from endtoend.errors import UsageError
from endtoend.relax import SetCriterion, generalized_box_iou, hungarian_match, soft_nms


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_boxes(n: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Valid xyxy boxes: a corner in [0, 0.5) and a size in [0.1, 0.5)."""
    corner = torch.rand(n, 2, generator=seeded(seed), dtype=dtype) * 0.5
    size = torch.rand(n, 2, generator=seeded(seed + 1), dtype=dtype) * 0.4 + 0.1
    return torch.cat([corner, corner + size], dim=1) * scale


def brute_force_cost(cost: torch.Tensor) -> float:
    rows, cols = cost.shape
    if rows <= cols:
        return min(sum(cost[i, p[i]].item() for i in range(rows)) for p in itertools.permutations(range(cols), rows))
    return brute_force_cost(cost.t())


def test_hungarian_match_finds_the_minimum_cost_for_square_and_rectangular_batches():
    square = torch.rand(3, 4, 4, generator=seeded(0))
    for cost, (rows, cols) in zip(square, hungarian_match(square)):
        assert rows.dtype == cols.dtype == torch.int64 and rows.device == square.device
        assert cost[rows, cols].sum().item() == pytest.approx(brute_force_cost(cost))
    ragged = [torch.rand(3, 5, generator=seeded(1)), torch.rand(5, 3, generator=seeded(2)), torch.zeros(4, 0)]
    matches = hungarian_match(ragged)
    for cost, (rows, cols) in zip(ragged[:2], matches[:2]):
        assert len(rows) == len(cols) == 3 and len(set(cols.tolist())) == 3
        assert cost[rows, cols].sum().item() == pytest.approx(brute_force_cost(cost))
    assert matches[2][0].numel() == matches[2][1].numel() == 0


def test_hungarian_match_rejects_non_finite_costs():
    with pytest.raises(UsageError, match="NaN or inf"):
        hungarian_match(torch.tensor([[[0.0, float("nan")], [1.0, 2.0]]]))
    with pytest.raises(UsageError, match=r"\(B, N, M\)"):
        hungarian_match(torch.zeros(2, 2, 2, 2))


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3), (0, 2)])
def test_hungarian_match_of_one_matrix_is_one_pair_as_scipy_gives(shape):
    cost = torch.rand(*shape, generator=seeded(3), dtype=torch.float64)
    rows, cols = hungarian_match(cost)
    expected_rows, expected_cols = linear_sum_assignment(cost.numpy())
    assert rows.dtype == cols.dtype == torch.int64
    assert rows.tolist() == expected_rows.tolist() and cols.tolist() == expected_cols.tolist()
    if cost.numel():
        assert cost[rows, cols].sum().item() == pytest.approx(brute_force_cost(cost))
    (batched_rows, batched_cols), = hungarian_match(cost[None])
    assert torch.equal(rows, batched_rows) and torch.equal(cols, batched_cols)


def test_generalized_box_iou_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [10.0, 10.0, 11.0, 11.0]])
    giou = generalized_box_iou(a, b)
    assert giou.shape == (2, 3)
    overlap = 1 / 7 - 2 / 9  # IoU 1/7, enclosing box 9, union 7
    torch.testing.assert_close(giou[:, :2], torch.tensor([[1.0, overlap], [overlap, 1.0]]))
    enclosing = 11.0 * 11.0
    torch.testing.assert_close(giou[0, 2], torch.tensor(0.0 - (enclosing - 5.0) / enclosing))
    torch.testing.assert_close(generalized_box_iou(b, a), giou.t())


def test_generalized_box_iou_has_gradient_for_disjoint_boxes():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[3.0, 0.0, 4.0, 1.0]])
    (grad,) = torch.autograd.grad(generalized_box_iou(a, b).sum(), a)
    assert grad[0, 2] > 0  # moving the right edge towards b helps
    boxes = random_boxes(3, seed=0, dtype=torch.float64).requires_grad_(True)
    others = random_boxes(4, seed=5, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(generalized_box_iou, (boxes, others))


def test_set_criterion_is_zero_on_perfect_permuted_predictions():
    targets = [{"labels": torch.tensor([2, 0]), "boxes": random_boxes(2, seed=0)}]
    boxes = random_boxes(4, seed=10)
    boxes[3], boxes[1] = targets[0]["boxes"][0], targets[0]["boxes"][1]
    logits = torch.full((1, 4, 4), -20.0)
    logits[0, :, 3] = 20.0  # no-object everywhere...
    logits[0, 3] = torch.tensor([-20.0, -20.0, 20.0, -20.0])  # ...except the two matched queries
    logits[0, 1] = torch.tensor([20.0, -20.0, -20.0, -20.0])
    criterion = SetCriterion(num_classes=3)
    (rows, cols), = criterion.match({"logits": logits, "boxes": boxes[None]}, targets)
    assert dict(zip(rows.tolist(), cols.tolist())) == {1: 1, 3: 0}
    losses = criterion({"logits": logits, "boxes": boxes[None]}, targets)
    assert losses["l1"].item() == 0.0 and abs(losses["giou"].item()) < 1e-6
    assert losses["class"].item() < 1e-6


def test_set_criterion_class_loss_is_eos_weighted_cross_entropy_and_gradients_flow():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, requires_grad=True)
    boxes = torch.stack([random_boxes(5, seed=1), random_boxes(5, seed=3)]).requires_grad_(True)
    targets = [{"labels": torch.tensor([1, 2, 0]), "boxes": random_boxes(3, seed=7)},
               {"labels": torch.tensor([], dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    criterion = SetCriterion(num_classes=3, eos_coef=0.25)
    losses = criterion({"logits": logits, "boxes": boxes}, targets)

    (rows, cols), _ = criterion.match({"logits": logits, "boxes": boxes}, targets)
    classes = torch.full((2, 5), 3)
    classes[0, rows] = targets[0]["labels"][cols]
    weights = torch.where(classes == 3, 0.25, 1.0)
    per_query = F.cross_entropy(logits.transpose(1, 2), classes, reduction="none")
    torch.testing.assert_close(losses["class"], (weights * per_query).sum() / weights.sum())
    expected_l1 = (boxes[0, rows] - targets[0]["boxes"][cols]).abs().sum() / 3
    torch.testing.assert_close(losses["l1"], expected_l1)
    torch.testing.assert_close(losses["total"], losses["class"] + 5 * losses["l1"] + 2 * losses["giou"])

    losses["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(boxes.grad).all() and boxes.grad[0, rows].abs().sum() > 0
    assert boxes.grad[1].abs().sum() == 0  # no targets in image 1: its boxes are not compared


def test_set_criterion_ignores_the_order_of_targets():
    logits = torch.randn(1, 6, 3, generator=seeded(0))
    boxes = random_boxes(6, seed=1)[None]
    labels, target_boxes = torch.tensor([0, 1, 1]), random_boxes(3, seed=4)
    order = torch.tensor([2, 0, 1])
    criterion = SetCriterion(num_classes=2)
    first = criterion({"logits": logits, "boxes": boxes}, [{"labels": labels, "boxes": target_boxes}])
    second = criterion({"logits": logits, "boxes": boxes}, [{"labels": labels[order], "boxes": target_boxes[order]}])
    torch.testing.assert_close(first["total"], second["total"])
    with pytest.raises(UsageError, match="num_classes"):
        criterion({"logits": torch.zeros(1, 6, 5), "boxes": boxes}, [{"labels": labels, "boxes": target_boxes}])


def reference_soft_nms(boxes, scores, sigma, method, threshold):
    """Algorithm 1 of Bodla et al. 2017, written plainly over Python lists."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union
    boxes, scores = boxes.tolist(), scores.tolist()
    remaining, result = list(range(len(scores))), [0.0] * len(scores)
    while remaining:
        best = max(remaining, key=lambda i: scores[i])
        remaining.remove(best)
        result[best] = scores[best]
        for i in remaining:
            overlap = iou(boxes[best], boxes[i])
            if method == "gaussian":
                scores[i] *= math.exp(-overlap**2 / sigma)
            elif overlap >= threshold:
                scores[i] *= 1 - overlap
    return torch.tensor(result, dtype=torch.float64)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_matches_the_published_algorithm(method):
    boxes = random_boxes(2 * 7, seed=0, dtype=torch.float64).reshape(2, 7, 4)
    scores = torch.rand(2, 7, generator=seeded(3), dtype=torch.float64)
    rescored = soft_nms(boxes, scores, sigma=0.5, method=method, iou_threshold=0.3)
    for item in range(2):
        expected = reference_soft_nms(boxes[item], scores[item], 0.5, method, 0.3)
        torch.testing.assert_close(rescored[item], expected)
    assert (rescored <= scores).all()


def test_soft_nms_leaves_disjoint_boxes_alone_and_is_differentiable():
    far_apart = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    scores = torch.tensor([0.3, 0.9])
    assert torch.equal(soft_nms(far_apart, scores), scores)
    boxes = random_boxes(5, seed=2, dtype=torch.float64).requires_grad_(True)
    scores = torch.rand(5, generator=seeded(4), dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b, s: soft_nms(b, s, sigma=0.5), (boxes, scores))
    (grad_boxes,) = torch.autograd.grad(soft_nms(boxes, scores).sum(), boxes)
    assert grad_boxes.abs().sum() > 0
    with pytest.raises(UsageError, match="method"):
        soft_nms(boxes, scores, method="hard")


def test_device_and_dtype_follow_the_input():
    meta_boxes, meta_scores = torch.zeros(4, 4, device="meta"), torch.zeros(4, device="meta")
    assert generalized_box_iou(meta_boxes, meta_boxes).device.type == "meta"
    assert soft_nms(meta_boxes, meta_scores).device.type == "meta"
    criterion = SetCriterion(num_classes=2).double()
    outputs = {"logits": torch.zeros(1, 3, 3, dtype=torch.float64), "boxes": random_boxes(3, 0, torch.float64)[None]}
    targets = [{"labels": torch.tensor([1]), "boxes": random_boxes(1, 9, torch.float64)}]
    assert all(loss.dtype == torch.float64 for loss in criterion(outputs, targets).values())


def test_set_criterion_batched_matching_equals_matching_each_item_alone():
    """The batch-wide cost matrix, split per item, gives each item's own optimal assignment,
    with items of 0, 1 and several targets in one batch."""
    generator = torch.Generator().manual_seed(3)
    criterion = SetCriterion(num_classes=3)
    logits = torch.randn(4, 6, 4, generator=generator)
    corners = torch.rand(4, 6, 2, generator=generator) * 0.6
    boxes = torch.cat([corners, corners + 0.1 + torch.rand(4, 6, 2, generator=generator) * 0.3], -1)
    targets = []
    for count in (0, 1, 3, 6):
        start = torch.rand(count, 2, generator=generator) * 0.6
        targets.append({"labels": torch.randint(0, 3, (count,), generator=generator),
                        "boxes": torch.cat([start, start + 0.2], -1)})
    matches = criterion.match({"logits": logits, "boxes": boxes}, targets)
    for item, (rows, cols) in enumerate(matches):
        target = targets[item]
        cost = (-logits[item].softmax(-1)[:, target["labels"]]
                + 5 * (boxes[item][:, None] - target["boxes"][None]).abs().sum(-1)
                - 2 * generalized_box_iou(boxes[item], target["boxes"])).numpy()
        best_rows, best_cols = linear_sum_assignment(cost)
        assert len(rows) == len(target["labels"])
        assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(cost[best_rows, best_cols].sum(), abs=1e-5)
