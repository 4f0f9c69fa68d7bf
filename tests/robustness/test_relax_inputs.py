"""`endtoend.relax` with bad parameters: one UsageError line naming the parameter.

A non-positive temperature or strength does not crash by itself: it gives NaN, a reversed
order or a constant, and training goes on. So each must be refused where it is passed.
"""

from __future__ import annotations

import pytest
import torch

from endtoend import relax
from robust_helpers import raises_usage_error

LOGITS = torch.randn(4, 5)
BOXES = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
SCORES = torch.tensor([0.9, 0.8])
LOG_PROBS = torch.randn(6, 2, 4).log_softmax(-1)
IMAGES = torch.randn(2, 1, 8, 8)

CASES = [
    # temperatures and strengths
    pytest.param(lambda: relax.gumbel_softmax(LOGITS, tau=0), ("tau",), id="gumbel_softmax tau=0"),
    pytest.param(lambda: relax.gumbel_softmax(LOGITS, tau=-1.0), ("tau",), id="gumbel_softmax tau=-1"),
    pytest.param(lambda: relax.gumbel_softmax(LOGITS, tau=float("nan")), ("tau",), id="gumbel_softmax tau=nan"),
    pytest.param(lambda: relax.relaxed_bernoulli(LOGITS, tau=0), ("tau",), id="relaxed_bernoulli tau=0"),
    pytest.param(lambda: relax.relaxed_bernoulli(LOGITS, tau=-0.5), ("tau",), id="relaxed_bernoulli tau=-0.5"),
    pytest.param(lambda: relax.soft_sort(LOGITS, strength=0), ("strength",), id="soft_sort strength=0"),
    pytest.param(lambda: relax.soft_sort(LOGITS, strength=-1.0), ("strength",), id="soft_sort strength=-1"),
    pytest.param(lambda: relax.soft_rank(LOGITS, strength=0), ("strength",), id="soft_rank strength=0"),
    pytest.param(lambda: relax.soft_rank(LOGITS, strength=-2.0), ("strength",), id="soft_rank strength=-2"),
    pytest.param(lambda: relax.soft_topk(LOGITS, k=2, tau=0), ("tau",), id="soft_topk tau=0"),
    pytest.param(lambda: relax.soft_topk(LOGITS, k=2, tau=-1.0), ("tau",), id="soft_topk tau=-1"),
    pytest.param(lambda: relax.soft_threshold(LOGITS, 0.0, sharpness=0), ("sharpness",),
                 id="soft_threshold sharpness=0"),
    pytest.param(lambda: relax.soft_threshold(LOGITS, 0.0, sharpness=-5.0), ("sharpness",),
                 id="soft_threshold sharpness=-5"),
    # k out of range
    pytest.param(lambda: relax.soft_topk(LOGITS, k=0), ("k",), id="soft_topk k=0"),
    pytest.param(lambda: relax.soft_topk(LOGITS, k=-1), ("k",), id="soft_topk k=-1"),
    pytest.param(lambda: relax.soft_topk(LOGITS, k=5), ("k",), id="soft_topk k=n"),
    pytest.param(lambda: relax.soft_topk(LOGITS, k=9), ("k",), id="soft_topk k>n"),
    pytest.param(lambda: relax.soft_topk(LOGITS, k=2.5), ("k",), id="soft_topk k=2.5"),
    # quantisation and schedules
    pytest.param(lambda: relax.quantize(LOGITS, bits=0, low=0.0, high=1.0), ("bits",), id="quantize bits=0"),
    pytest.param(lambda: relax.quantize(LOGITS, bits=2.5, low=0.0, high=1.0), ("bits",), id="quantize bits=2.5"),
    pytest.param(lambda: relax.quantize(LOGITS, bits=4, low=1.0, high=1.0), ("high",), id="quantize high == low"),
    pytest.param(lambda: relax.quantize(LOGITS, bits=4, low=1.0, high=0.0), ("high",), id="quantize high < low"),
    pytest.param(lambda: relax.anneal_temperature(0, 0), ("total_steps",), id="anneal_temperature total_steps=0"),
    pytest.param(lambda: relax.anneal_temperature(0, 100, tau0=1.0, tau_min=0), ("tau_min",),
                 id="anneal_temperature tau_min=0"),
    pytest.param(lambda: relax.anneal_temperature(0, 100, tau0=0.5, tau_min=1.0), ("tau_min",),
                 id="anneal_temperature tau_min > tau0"),
    # shapes and choices
    pytest.param(lambda: relax.reparameterize(torch.zeros(3, 2), torch.zeros(3, 4)), ("logvar",),
                 id="reparameterize shapes differ"),
    pytest.param(lambda: relax.soft_nms(BOXES, SCORES, method="box"), ("method",), id="soft_nms method=box"),
    pytest.param(lambda: relax.soft_nms(BOXES, SCORES, sigma=0), ("sigma",), id="soft_nms sigma=0"),
    pytest.param(lambda: relax.soft_nms(BOXES, SCORES[:1]), ("scores",), id="soft_nms scores/boxes mismatch"),
    pytest.param(lambda: relax.ctc_greedy_decode(LOG_PROBS, blank=4), ("blank",), id="ctc_greedy_decode blank=C"),
    pytest.param(lambda: relax.ctc_greedy_decode(LOG_PROBS[0]), ("log_probs",), id="ctc_greedy_decode 2-D log_probs"),
    pytest.param(lambda: relax.ctc_greedy_decode(LOG_PROBS, input_lengths=[7, 2]), ("input_lengths",),
                 id="ctc_greedy_decode length > T"),
    pytest.param(lambda: relax.ctc_beam_decode(LOG_PROBS, beam=0), ("beam",), id="ctc_beam_decode beam=0"),
    pytest.param(lambda: relax.affine_crop(IMAGES[0], torch.zeros(1, 4), (2, 2)), ("images",),
                 id="affine_crop 3-D images"),
    pytest.param(lambda: relax.affine_crop(IMAGES, torch.zeros(3, 4), (2, 2)), ("boxes",),
                 id="affine_crop one box too many"),
    pytest.param(lambda: relax.generalized_box_iou(torch.zeros(2, 3), BOXES), (("boxes1", "(2, 3)"),),
                 id="generalized_box_iou boxes1 not (N, 4)"),
    pytest.param(lambda: relax.hungarian_match(torch.zeros(5)), ("cost",), id="hungarian_match 1-D cost"),
]


@pytest.mark.parametrize("call, needles", CASES)
def test_bad_relaxation_parameter_is_one_usage_error_naming_it(call, needles):
    raises_usage_error(call, *needles)
