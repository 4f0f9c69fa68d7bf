"""Each graph cut the registry knows, before and after swapping in its relaxation.

Before: a model whose front part feeds the loss only through a cutting op gets no
gradient there (None, or exactly zero). After: the same model with the relaxation from
`fix_for` trains every parameter.
"""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from endtoend import relax
from endtoend.relax import fix_for


class Pipeline(nn.Module):
    """front -> cut -> back: the cut decides whether `front` can learn."""

    def __init__(self, cut: Callable[[torch.Tensor], torch.Tensor], width: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.front = nn.Linear(4, width)
        self.back = nn.Linear(width, 1)
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.back(self.cut(self.front(x)))


def hard_gaussian_sample(h: torch.Tensor) -> torch.Tensor:
    mu, logvar = h.chunk(2, dim=-1)
    return torch.normal(mu, torch.exp(0.5 * logvar)).repeat(1, 2)


def relaxed_gaussian_sample(h: torch.Tensor) -> torch.Tensor:
    mu, logvar = h.chunk(2, dim=-1)
    return relax.reparameterize(mu, logvar).repeat(1, 2)


def seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# (op as the audit names it, the relaxation fix_for names, the cutting function, the fixed one)
CUTS = [
    ("argmax", "straight_through_argmax",
     lambda h: F.one_hot(h.argmax(-1), h.shape[-1]).float(), relax.straight_through_argmax),
    ("multinomial", "gumbel_softmax",
     lambda h: F.one_hot(torch.multinomial(h.softmax(-1), 1, generator=seeded())[:, 0], h.shape[-1]).float(),
     lambda h: relax.gumbel_softmax(h, hard=True, generator=seeded())),
    ("round", "straight_through_round", torch.round, relax.straight_through_round),
    ("floor", "quantize", lambda h: torch.floor(h * 4) / 4, lambda h: relax.quantize(h, bits=3, low=-1.0, high=1.0)),
    ("sign", "straight_through_sign", torch.sign, relax.straight_through_sign),
    ("gt", "soft_threshold", lambda h: (h > 0).float(), lambda h: relax.soft_threshold(h, 0.0, sharpness=5.0)),
    ("bernoulli", "relaxed_bernoulli", lambda h: torch.bernoulli(torch.sigmoid(h), generator=seeded()),
     lambda h: relax.relaxed_bernoulli(h, tau=0.5, hard=True, generator=seeded())),
    ("normal", "reparameterize", hard_gaussian_sample, relaxed_gaussian_sample),
    ("topk", "soft_topk", lambda h: torch.zeros_like(h).scatter(-1, h.topk(2, dim=-1).indices, 1.0),
     lambda h: relax.soft_topk(h, k=2, tau=0.5)),
    ("argsort", "soft_rank", lambda h: h.argsort(-1).argsort(-1).float(), lambda h: relax.soft_rank(h, strength=2.0)),
]


def front_gradient(model: nn.Module, inputs: torch.Tensor, loss_fn=None) -> torch.Tensor | None:
    model.zero_grad(set_to_none=True)
    output = model(inputs)
    loss = loss_fn(output) if loss_fn else (output - 1.0).pow(2).mean()
    loss.backward()
    return model.front.weight.grad


def assert_starved(grad: torch.Tensor | None) -> None:
    assert grad is None or torch.count_nonzero(grad) == 0


def assert_trained(grad: torch.Tensor | None) -> None:
    assert grad is not None and torch.isfinite(grad).all() and torch.count_nonzero(grad) > 0


@pytest.mark.parametrize("op, fix_name, cut, relaxation", CUTS, ids=[case[0] for case in CUTS])
def test_relaxation_restores_the_gradient_of_the_starved_layer(op, fix_name, cut, relaxation):
    inputs = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    assert_starved(front_gradient(Pipeline(cut), inputs))
    assert f"endtoend.relax.{fix_name}" in fix_for(op)
    assert_trained(front_gradient(Pipeline(relaxation), inputs))


class CropClassifier(nn.Module):
    """A localiser predicts where to look; a classifier reads that crop."""

    def __init__(self, differentiable: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.front = nn.Linear(8 * 8, 4)  # the localiser, named `front` like the pipelines
        self.classifier = nn.Linear(3 * 4 * 4, 1)
        self.differentiable = differentiable

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        corner = 2 + 2 * torch.tanh(self.front(images.mean(1).flatten(1)))[:, :2]  # x1, y1 in [0, 4]
        if self.differentiable:
            boxes = torch.cat([corner, corner + 4], dim=1)
            crops = relax.affine_crop(images, boxes, size=(4, 4))
        else:
            crops = torch.stack([image[:, int(y):int(y) + 4, int(x):int(x) + 4]
                                 for image, (x, y) in zip(images, corner.tolist())])
        return self.classifier(crops.flatten(1))


def test_affine_crop_trains_the_localiser_that_integer_slicing_starves():
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert "affine_crop" in fix_for("integer_index")
    assert_starved(front_gradient(CropClassifier(differentiable=False), images))
    assert_trained(front_gradient(CropClassifier(differentiable=True), images))


class Detector(nn.Module):
    """Scores and boxes for a fixed set of proposals, then suppression of overlaps."""

    def __init__(self, soft: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.front = nn.Linear(4, 4)  # box regressor, named `front` like the pipelines
        self.scorer = nn.Linear(4, 1)
        self.soft = soft

    def forward(self, proposals: torch.Tensor) -> torch.Tensor:
        boxes = proposals + 0.1 * self.front(proposals)
        scores = torch.sigmoid(self.scorer(proposals))[:, 0]
        if self.soft:
            return relax.soft_nms(boxes, scores, sigma=0.5)
        best = boxes[scores.argmax()]
        overlap = relax.generalized_box_iou(best[None], boxes)[0]
        keep = (overlap < 0.5) | (torch.arange(len(scores)) == scores.argmax())
        return scores * keep.float()  # hard NMS: boxes only decide *which* scores survive


def test_soft_nms_trains_the_box_regressor_that_hard_nms_starves():
    proposals = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.2, 0.1, 2.1, 2.0], [3.0, 3.0, 4.0, 4.0], [0.1, 0.3, 2.0, 2.2]])
    assert "soft_nms" in fix_for("nms")
    assert_starved(front_gradient(Detector(soft=False), proposals, loss_fn=lambda kept: kept.sum()))
    assert_trained(front_gradient(Detector(soft=True), proposals, loss_fn=lambda kept: kept.sum()))
