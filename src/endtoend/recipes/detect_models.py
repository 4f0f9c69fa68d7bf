"""The detect recipe's two end-to-end detectors, one output form, no NMS at inference.

Both map raw uint8 pixels (N, 3, 64, 64) to {"logits": (N, Q, 4), "boxes": (N, Q, 4)}: per
candidate, scores for circle, square, triangle and "no object" (the last), and a box xyxy
normalised to [0, 1]. `decode` turns that into detections (each candidate's best real class,
scored by its probability, best first): nothing is suppressed by overlap, so any duplicate is
the model's own mistake, and the loss is what teaches it not to make one.

- `SetDetector` (DETR, Carion et al. 2020, with the two-stage query selection of Deformable
  DETR, Zhu et al. 2021, and DINO, Zhang et al. 2023): a CNN backbone to a 16x16 feature map
  with sine positions, one transformer encoder layer, a dense proposal per cell, and a small
  transformer decoder whose 16 object queries start from the best proposals and refine them
  layer by layer. Trained by `relax.SetCriterion` (Hungarian matching under no_grad, then
  class + L1 + GIoU) on the last layer, on every earlier layer (auxiliary losses) and on the
  dense proposals. Queries that start on objects are what lets it train in minutes on a CPU:
  a first try here, DETR with 12 learned reference-point queries (d=128, lr 5e-4), had val
  mAP@0.5 0.015 after 186 steps; this model (d=64, lr 1e-3) had 0.48, and 0.90 after 465 (not a
  controlled comparison: width and learning rate changed too).
- `GridDetector` (YOLO, Redmon et al. 2016, one box per cell): the same backbone and a dense
  head, one candidate per cell of the 16x16 grid; an object is assigned, by hand, to the cell
  that holds its centre (`GridCriterion`); the box is an offset from the cell.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from endtoend.data.shapes import CLASSES, SIZE
from endtoend.relax import SetCriterion
from endtoend.relax.sets import _giou

NO_OBJECT = len(CLASSES)  # the last logit


def conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class Backbone(nn.Module):
    """uint8 (N, 3, 64, 64) -> features (N, width, 16, 16): six 3x3 convs, the first and third stride 2
    (objects are at least 10 px wide, so a stride-2 start loses nothing they need)."""

    def __init__(self, width: int = 64):
        super().__init__()
        half = width // 2
        self.layers = nn.Sequential(conv(3, half, 2), conv(half, half), conv(half, width, 2), conv(width, width),
                                    conv(width, width), conv(width, width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images.float() / 255.0)


def sine_embedding(points: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., k) coordinates in [0, 1] -> (..., dim) sine/cosine features (DETR's positional
    encoding, dim // (2k) frequencies per coordinate; dim a multiple of 2k)."""
    per = dim // (2 * points.shape[-1])
    frequencies = 2 * math.pi * 10000 ** (-torch.arange(per, device=points.device, dtype=points.dtype) / per)
    angles = points[..., :, None] * frequencies * 10  # (..., k, per)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def grid_points(size: int, device=None) -> torch.Tensor:
    """The centres of a size x size grid over [0, 1]^2, (size * size, 2) as (x, y), row-major."""
    centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1)


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(1e-4, 1 - 1e-4)
    return torch.log(x / (1 - x))


def xyxy(box_logits: torch.Tensor) -> torch.Tensor:
    """Normalised xyxy boxes from (cx, cy, w, h) logits: the sigmoid keeps sizes positive, so
    GIoU is defined from the first step."""
    centre, size = box_logits[..., :2].sigmoid(), box_logits[..., 2:].sigmoid()
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def mlp(dim: int, out: int, zero_last: bool = False) -> nn.Sequential:
    layers = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))
    if zero_last:  # start from the reference box itself
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return layers


INITIAL_SIZE_LOGIT = -1.5  # sigmoid(-1.5) * 64 = 11.5 px, the small end of the objects' sizes


class SetDetector(nn.Module):
    """DETR with two-stage query selection (Deformable DETR's two-stage variant, DINO's query
    selection): backbone -> 16x16 memory (+ sine positions) -> `encoder_layers` transformer
    encoder layers -> a dense proposal per cell (class logits, a box relative to the cell) ->
    the `queries` best-scored proposals become the decoder's queries (content: their memory
    features; position: their boxes) -> `layers` decoder layers, each refining every query's
    box (iterative refinement, no detach) and predicting its class.

    Output: the last layer's {"logits", "boxes"}; for the loss also the earlier layers'
    ("aux_logits", "aux_boxes", stacked) and the dense proposals' ("proposal_logits",
    "proposal_boxes"), each trained by the set loss: one-to-one matching everywhere, which is
    what makes duplicates costly and NMS unnecessary. The top-k choice of queries is a decision
    (indices); the values it gathers keep their gradient."""

    def __init__(self, width: int = 64, dim: int = 64, queries: int = 16, layers: int = 3, heads: int = 4,
                 encoder_layers: int = 1):
        super().__init__()
        self.dim, self.queries = dim, queries
        self.backbone = Backbone(width)
        self.project = nn.Conv2d(width, dim, 1)
        block = dict(dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, **block) for _ in range(encoder_layers))
        self.proposal_class = nn.Linear(dim, len(CLASSES) + 1)
        self.proposal_box = mlp(dim, 4, zero_last=True)
        self.query_pos = mlp(dim, dim)
        self.decoder = nn.ModuleList(nn.TransformerDecoderLayer(dim, heads, **block) for _ in range(layers))
        self.classify = nn.Linear(dim, len(CLASSES) + 1)
        self.refine = mlp(dim, 4, zero_last=True)
        cells = grid_points(SIZE // 4)
        self.register_buffer("memory_pos", sine_embedding(cells, dim), persistent=False)
        self.register_buffer("cell_logits", torch.cat([inverse_sigmoid(cells), torch.full_like(cells, INITIAL_SIZE_LOGIT)],
                                                      -1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        memory = self.project(self.backbone(images)).flatten(2).transpose(1, 2)  # (N, 256, dim)
        for layer in self.encoder:
            memory = layer(memory + self.memory_pos)
        memory = memory + self.memory_pos
        proposal_logits = self.proposal_class(memory)
        proposal_refs = self.cell_logits + self.proposal_box(memory)  # (cx, cy, w, h) logits per cell
        with torch.no_grad():  # which proposals become queries: a decision, like the matcher's
            scores = proposal_logits.softmax(-1)[..., :NO_OBJECT].amax(-1)
            chosen = scores.topk(min(self.queries, scores.shape[1]), dim=1).indices
        take = lambda x: x.gather(1, chosen[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        queries, refs = take(memory), take(proposal_refs)
        logits, boxes = [], []
        for layer in self.decoder:
            queries = layer(queries + self.query_pos(sine_embedding(refs.sigmoid(), self.dim)), memory)
            refs = refs + self.refine(queries)
            logits.append(self.classify(queries))
            boxes.append(xyxy(refs))
        return {"logits": logits[-1], "boxes": boxes[-1], "aux_logits": torch.stack(logits[:-1]),
                "aux_boxes": torch.stack(boxes[:-1]), "proposal_logits": proposal_logits,
                "proposal_boxes": xyxy(proposal_refs)}


class GridDetector(nn.Module):
    """YOLO-style: backbone -> per cell of the 16x16 grid, class logits (no-object last) and a
    box: the centre as an offset within the cell's neighbourhood, the size in [0, 1]."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.backbone = Backbone(width)
        self.head = nn.Sequential(conv(width, width), nn.Conv2d(width, len(CLASSES) + 1 + 4, 1))
        self.register_buffer("cells", grid_points(SIZE // 4), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.head(self.backbone(images)).flatten(2).transpose(1, 2)  # (N, 256, 8)
        logits, box = out[..., :len(CLASSES) + 1], out[..., len(CLASSES) + 1:]
        centre = self.cells + box[..., :2].tanh() * (2 / (SIZE // 4))  # within two cells of its own
        size = box[..., 2:].sigmoid()
        return {"logits": logits, "boxes": torch.cat([centre - size / 2, centre + size / 2], dim=-1)}


# --- losses ----------------------------------------------------------------------------------------

def target_list(targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """The padded (N, 5, 5) targets as SetCriterion's list of {"labels", "boxes" normalised}."""
    used = targets[..., 0] >= 0
    return [{"labels": t[u, 0].long(), "boxes": t[u, 1:] / SIZE} for t, u in zip(targets, used)]


class SetLoss(nn.Module):
    """DETR's loss: `SetCriterion` on the last decoder layer, plus the same on each earlier one
    and on the dense proposals when the outputs hold them."""

    def __init__(self, **criterion):
        super().__init__()
        self.criterion = SetCriterion(len(CLASSES), **criterion)

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        targets = target_list(targets)
        total = self.criterion(outputs, targets)["total"]
        for logits, boxes in zip(outputs.get("aux_logits", ()), outputs.get("aux_boxes", ())):
            total = total + self.criterion({"logits": logits, "boxes": boxes}, targets)["total"]
        if "proposal_logits" in outputs:
            proposals = {"logits": outputs["proposal_logits"], "boxes": outputs["proposal_boxes"]}
            total = total + self.criterion(proposals, targets)["total"]
        return total


class GridCriterion(nn.Module):
    """YOLO's loss with hand-made assignment: each object belongs to the cell holding its centre
    (a second object in a taken cell goes to the nearest free cell); that cell learns its class
    and box (L1 + GIoU, DETR's weights), every other cell "no object" (weighted `no_object`)."""

    def __init__(self, no_object: float = 0.1, l1_weight: float = 5.0, giou_weight: float = 2.0):
        super().__init__()
        self.no_object, self.l1_weight, self.giou_weight = no_object, l1_weight, giou_weight

    @torch.no_grad()
    def assign(self, cells: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        assigned = []
        for target in targets:
            centres = (target["boxes"][:, :2] + target["boxes"][:, 2:]) / 2
            distance = torch.cdist(centres, cells)  # (n, cells)
            chosen: list[int] = []
            for row in distance:
                order = row.argsort()
                chosen.append(next(int(c) for c in order if int(c) not in chosen))
            assigned.append(torch.tensor(chosen, dtype=torch.long, device=cells.device))
        return assigned

    def forward(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits, boxes = outputs["logits"], outputs["boxes"]
        targets = target_list(targets)
        cells = grid_points(SIZE // 4, device=logits.device)
        assigned = self.assign(cells, targets)
        classes = torch.full(logits.shape[:2], NO_OBJECT, dtype=torch.long, device=logits.device)
        batch = torch.cat([torch.full_like(a, i) for i, a in enumerate(assigned)])
        cell = torch.cat(assigned)
        classes[batch, cell] = torch.cat([t["labels"] for t in targets]).to(logits.device)
        weights = torch.ones(len(CLASSES) + 1, device=logits.device, dtype=logits.dtype)
        weights[NO_OBJECT] = self.no_object
        loss = F.cross_entropy(logits.transpose(1, 2), classes, weight=weights)
        count = max(len(cell), 1)
        truth = torch.cat([t["boxes"] for t in targets]).to(boxes.dtype)
        predicted = boxes[batch, cell]
        l1 = (predicted - truth).abs().sum() / count
        giou = (1 - _giou(predicted, truth)).sum() / count
        return loss + self.l1_weight * l1 + self.giou_weight * giou


# --- decoding: candidates -> detections, no NMS -------------------------------------------------

def decode(outputs: dict[str, torch.Tensor], keep: int = 20) -> torch.Tensor:
    """(N, keep, 6) detections `label, score, x1, y1, x2, y2` (pixels), best first: each
    candidate's most probable real class and its probability; no overlap suppression."""
    probabilities = outputs["logits"].float().softmax(-1)[..., :NO_OBJECT]
    scores, labels = probabilities.max(-1)
    boxes = outputs["boxes"].float().clamp(0, 1) * SIZE
    keep = min(keep, scores.shape[1])
    top, index = scores.topk(keep, dim=1)
    gather = lambda x: x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
    return torch.cat([gather(labels[..., None].float()), top[..., None], gather(boxes)], dim=-1)
