"""Sets and detection: replacements for non-maximum suppression and hand-made target assignment.

Hard NMS deletes boxes by index, so a detector trained through it gets no signal about
the boxes it removed; heuristic anchor assignment fixes targets outside the graph. A
set loss (match predictions to targets with the Hungarian algorithm, then a loss on the
matched pairs) trains the whole detector end to end with no NMS at all (DETR);
`soft_nms` keeps an NMS-like step but only rescales scores, smoothly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from endtoend.errors import UsageError
from endtoend.relax import _checks

Outputs = dict[str, torch.Tensor]  # {"logits": (B, Q, C + 1), "boxes": (B, Q, 4)}
Targets = list[dict[str, torch.Tensor]]  # per image {"labels": (n,), "boxes": (n, 4)}


def hungarian_match(
    cost: torch.Tensor | list[torch.Tensor],
) -> list[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment for each cost matrix of a batch, or for one matrix.

    Math: argmin over partial permutations sigma of sum_i cost[i, sigma(i)] (min(N, M) pairs).
    Source: Kuhn 1955 (Hungarian method), via scipy.optimize.linear_sum_assignment.
    Shapes: cost (B, N, M) or a list of (N_i, M_i) -> a list of B (row_idx, col_idx) pairs,
    int64 tensors of length min(N_i, M_i) on the cost's device, rows ascending; one cost
    matrix (N, M) -> one (row_idx, col_idx) pair, as linear_sum_assignment returns.
    Use: not differentiable (it returns indices); use it under no_grad to decide *which* pairs
    a differentiable loss compares, as `SetCriterion` does.

    Example:
        >>> import torch
        >>> from endtoend.relax import hungarian_match
        >>> cost = torch.tensor([[[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]]])
        >>> [(rows.tolist(), cols.tolist()) for rows, cols in hungarian_match(cost)]
        [([0, 1, 2], [1, 0, 2])]
        >>> rows, cols = hungarian_match(cost[0])  # one (N, M) matrix: one pair
        >>> cols.tolist()
        [1, 0, 2]
    """
    if isinstance(cost, torch.Tensor) and cost.dim() == 2:
        return hungarian_match(cost[None])[0]
    if isinstance(cost, torch.Tensor):
        if cost.dim() != 3:
            raise UsageError(f"hungarian_match: cost must be (N, M), (B, N, M) or a list of (N, M) matrices, "
                             f"got shape {tuple(cost.shape)}")
        matrices = list(cost.detach().to("cpu", torch.float64).numpy())  # one transfer for the batch
        devices = [cost.device] * len(matrices)
    else:
        matrices = [c.detach().to("cpu", torch.float64).numpy() for c in cost]
        devices = [c.device for c in cost]
    from scipy.optimize import linear_sum_assignment  # imported here: it adds 0.7 s to `import endtoend`

    matches = []
    for item, (matrix, device) in enumerate(zip(matrices, devices)):
        if matrix.ndim != 2:
            raise UsageError(f"hungarian_match: cost matrix {item} must be 2-D (N, M), got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise UsageError(f"hungarian_match: cost matrix {item} contains NaN or inf; "
                             "check the predictions that built it")
        rows, cols = linear_sum_assignment(matrix)
        matches.append((
            torch.as_tensor(rows, dtype=torch.int64, device=device),
            torch.as_tensor(cols, dtype=torch.int64, device=device),
        ))
    return matches


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou_and_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union area of boxes a and b (xyxy), broadcasting over leading dims."""
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    overlap = (bottom_right - top_left).clamp_min(0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = _area(a) + _area(b) - intersection
    # `tiny` only matters for empty boxes, where it turns 0 / 0 into 0 instead of NaN.
    return intersection / union.clamp_min(torch.finfo(union.dtype).tiny), union


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    iou, union = _iou_and_union(a, b)
    enclosing = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp_min(0)
    enclosing_area = (enclosing[..., 0] * enclosing[..., 1]).clamp_min(torch.finfo(union.dtype).tiny)
    return iou - (enclosing_area - union) / enclosing_area


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU of two sets of xyxy boxes, in [-1, 1].

    Math: GIoU = IoU - |C \\ (A u B)| / |C|, C the smallest box enclosing A and B; unlike
    IoU it still has a gradient when the boxes do not overlap.
    Source: Rezatofighi et al. 2019, Generalized Intersection over Union.
    Shapes: boxes1 (N, 4), boxes2 (M, 4), xyxy with x2 >= x1 and y2 >= y1 -> (N, M).

    Example:
        >>> import torch
        >>> from endtoend.relax import generalized_box_iou
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
        >>> generalized_box_iou(a, b)
        tensor([[ 1.0000, -0.0794, -0.3333]])
    """
    _checks.tensors("generalized_box_iou", boxes1=boxes1, boxes2=boxes2)
    if boxes1.dim() != 2 or boxes1.shape[-1] != 4 or boxes2.dim() != 2 or boxes2.shape[-1] != 4:
        raise UsageError(f"generalized_box_iou: boxes must be (N, 4) and (M, 4) xyxy, "
                         f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    return _giou(boxes1[:, None, :], boxes2[None, :, :])


class SetCriterion(nn.Module):
    """DETR's set loss: Hungarian matching, then class + L1 + GIoU losses on matched pairs.

    Math: match with cost = -w_class * p(target class) + w_l1 * |b - b*|_1 - w_giou * GIoU(b, b*)
    (under no_grad); then loss = class_weight * CE (unmatched queries -> the no-object class
    C, weighted by eos_coef) + l1_weight * L1 + giou_weight * (1 - GIoU), box terms averaged
    over the number of target boxes. Defaults are DETR's.
    Source: Carion et al. 2020, End-to-End Object Detection with Transformers, section 3.1.
    Shapes: outputs {"logits": (B, Q, C + 1), "boxes": (B, Q, 4) xyxy}; targets a list of B
    dicts {"labels": int64 (n_b,), "boxes": (n_b, 4) xyxy}, on the outputs' device ->
    {"class", "l1", "giou", "total"}, scalars.
    Use: in place of NMS plus anchor assignment: no box is deleted by index.

    Example:
        >>> import torch
        >>> from endtoend.relax import SetCriterion
        >>> criterion = SetCriterion(num_classes=2)
        >>> logits = torch.zeros(1, 3, 3, requires_grad=True)
        >>> boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]]],
        ...                      requires_grad=True)
        >>> targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]])}]
        >>> losses = criterion({"logits": logits, "boxes": boxes}, targets)
        >>> sorted(losses), losses["l1"].item(), losses["giou"].item()
        (['class', 'giou', 'l1', 'total'], 0.0, 0.0)
        >>> losses["total"].backward()
        >>> bool(logits.grad.abs().sum() > 0)
        True
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_weight: float = 1.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        eos_coef: float = 0.1,
        match_class: float = 1.0,
        match_l1: float = 5.0,
        match_giou: float = 2.0,
    ) -> None:
        super().__init__()
        _checks.integer("SetCriterion", "num_classes", num_classes, low=1,
                        hint=" (the real classes; the no-object class is added)")
        _checks.positive("SetCriterion", "eos_coef", eos_coef, "; DETR uses 0.1")
        terms = {"class_weight": class_weight, "l1_weight": l1_weight, "giou_weight": giou_weight,
                 "match_class": match_class, "match_l1": match_l1, "match_giou": match_giou}
        for name, value in terms.items():
            _checks.non_negative("SetCriterion", name, value, "; pass 0 to drop the term")
        self.num_classes = num_classes
        self.class_weight, self.l1_weight, self.giou_weight = class_weight, l1_weight, giou_weight
        self.match_class, self.match_l1, self.match_giou = match_class, match_l1, match_giou
        weights = torch.ones(num_classes + 1)
        weights[-1] = eos_coef  # most queries are "no object"; down-weight them (DETR uses 0.1)
        self.register_buffer("class_weights", weights)

    @torch.no_grad()
    def match(self, outputs: Outputs, targets: Targets) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch item, (query indices, target indices) of the minimum-cost matching.

        As DETR does it: one cost matrix between every query of the batch and every target of
        the batch, in three batched ops, then each item's block; a loop over the items would
        cost more in Python than the matching itself."""
        batch, queries = outputs["logits"].shape[:2]
        sizes = [len(target["labels"]) for target in targets]
        probabilities = outputs["logits"].flatten(0, 1).softmax(dim=-1)  # (B*Q, C+1)
        pred_boxes = outputs["boxes"].flatten(0, 1)
        labels = torch.cat([target["labels"] for target in targets]).to(probabilities.device)
        boxes = torch.cat([target["boxes"] for target in targets]).to(pred_boxes)
        l1 = (pred_boxes[:, None, :] - boxes[None, :, :]).abs().sum(dim=-1)
        cost = (-self.match_class * probabilities[:, labels] + self.match_l1 * l1
                - self.match_giou * _giou(pred_boxes[:, None, :], boxes[None, :, :])).view(batch, queries, len(labels))
        return hungarian_match([block[item] for item, block in enumerate(cost.split(sizes, dim=-1))])

    def forward(self, outputs: Outputs, targets: Targets) -> dict[str, torch.Tensor]:
        logits, pred_boxes = outputs["logits"], outputs["boxes"]
        batch, queries, classes = logits.shape
        if classes != self.num_classes + 1:
            raise UsageError(f"SetCriterion: logits must have num_classes + 1 = {self.num_classes + 1} entries "
                             f"(the last is no-object), got {classes}")
        if len(targets) != batch:
            raise UsageError(f"SetCriterion: expected one target dict per batch item ({batch}), got {len(targets)}")
        matches = self.match(outputs, targets)
        batch_index = torch.cat([torch.full_like(rows, item) for item, (rows, _) in enumerate(matches)])
        query_index = torch.cat([rows for rows, _ in matches])
        matched_labels = torch.cat([t["labels"][cols] for t, (_, cols) in zip(targets, matches)])
        matched_boxes = torch.cat([t["boxes"][cols] for t, (_, cols) in zip(targets, matches)])

        target_classes = torch.full((batch, queries), self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_index, query_index] = matched_labels.to(logits.device)
        loss_class = F.cross_entropy(logits.transpose(1, 2), target_classes,
                                     weight=self.class_weights.to(logits.dtype))

        num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
        predicted = pred_boxes[batch_index, query_index]
        loss_l1 = (predicted - matched_boxes).abs().sum() / num_boxes
        loss_giou = (1 - _giou(predicted, matched_boxes)).sum() / num_boxes
        total = self.class_weight * loss_class + self.l1_weight * loss_l1 + self.giou_weight * loss_giou
        return {"class": loss_class, "l1": loss_l1, "giou": loss_giou, "total": total}


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    sigma: float = 0.5,
    method: str = "gaussian",
    iou_threshold: float = 0.3,
) -> torch.Tensor:
    """Soft non-maximum suppression: decay the scores of overlapping boxes instead of deleting them.

    Math: repeatedly take the highest-scoring unvisited box M and rescale every other unvisited
    score s_i *= exp(-IoU(M, b_i)^2 / sigma) ("gaussian") or, for "linear", s_i *= 1 - IoU(M, b_i)
    when IoU >= iou_threshold. The visiting order is discrete; the rescored values are smooth
    functions of scores and boxes.
    Source: Bodla, Singh, Chellappa & Davis 2017, Soft-NMS, algorithm 1.
    Shapes: boxes (..., N, 4) xyxy, scores (..., N) -> rescored scores (..., N), in the input
    order.
    Use: in place of torchvision.ops.nms; keep boxes whose rescored score passes your
    threshold (as a weight or mask, not an index).

    Example:
        >>> import torch
        >>> from endtoend.relax import soft_nms
        >>> boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
        >>> scores = torch.tensor([0.9, 0.8, 0.7], requires_grad=True)
        >>> soft_nms(boxes, scores, sigma=0.5)  # box 1 has IoU 0.5 with box 0: 0.8 * exp(-0.5)
        tensor([0.9000, 0.4852, 0.7000], grad_fn=<WhereBackward0>)
    """
    _checks.tensors("soft_nms", boxes=boxes, scores=scores)
    if method not in ("gaussian", "linear"):
        raise UsageError(f"soft_nms: method must be 'gaussian' or 'linear', got {method!r}")
    _checks.positive("soft_nms", "sigma", sigma, "; the paper uses 0.5")
    _checks.between("soft_nms", "iou_threshold", iou_threshold, 0.0, 1.0, " (an IoU)")
    if boxes.shape[:-1] != scores.shape or boxes.shape[-1] != 4:
        raise UsageError(f"soft_nms: boxes must be (..., N, 4) and scores (..., N), "
                         f"got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    current = scores
    visited = torch.zeros_like(scores, dtype=torch.bool)
    for _ in range(scores.shape[-1]):
        best = current.detach().masked_fill(visited, -torch.inf).argmax(dim=-1, keepdim=True)
        visited = visited.scatter(-1, best, True)
        best_box = boxes.gather(-2, best.unsqueeze(-1).expand(*best.shape, 4))
        iou, _ = _iou_and_union(best_box, boxes)
        if method == "gaussian":
            decay = torch.exp(-iou.pow(2) / sigma)
        else:
            decay = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
        current = torch.where(visited, current, current * decay)
    return current
