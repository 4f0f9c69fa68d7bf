"""Every relaxation refuses a bad argument with one UsageError line, instead of a silent NaN,
a reversed order or a constant output."""

import math

import numpy as np
import pytest
import torch

from endtoend import relax
from endtoend.errors import UsageError
from endtoend.relax import (
    SetCriterion,
    affine_crop,
    anneal_temperature,
    ctc_beam_decode,
    ctc_greedy_decode,
    generalized_box_iou,
    gumbel_softmax,
    hungarian_match,
    quantize,
    relaxed_bernoulli,
    soft_argmax,
    soft_nms,
    soft_rank,
    soft_sort,
    soft_threshold,
    soft_topk,
)

ROW = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
BOXES = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
LOG_PROBS = torch.zeros(5, 1, 3).log_softmax(-1)
IMAGES = torch.zeros(1, 1, 4, 4)
CROP_BOX = torch.tensor([[0.0, 0.0, 2.0, 2.0]])

# (call, function named in the message, argument named in the message)
BAD_ARGUMENTS = {
    "gumbel_softmax tau=0": (lambda: gumbel_softmax(ROW, tau=0.0), "gumbel_softmax", "tau"),
    "gumbel_softmax tau<0": (lambda: gumbel_softmax(ROW, tau=-1.0), "gumbel_softmax", "tau"),
    "gumbel_softmax tau=nan": (lambda: gumbel_softmax(ROW, tau=math.nan), "gumbel_softmax", "tau"),
    "gumbel_softmax tau=inf": (lambda: gumbel_softmax(ROW, tau=math.inf), "gumbel_softmax", "tau"),
    "relaxed_bernoulli tau=0": (lambda: relaxed_bernoulli(ROW, tau=0.0), "relaxed_bernoulli", "tau"),
    "soft_argmax beta<0": (lambda: soft_argmax(ROW, beta=-1.0), "soft_argmax", "beta"),
    "soft_argmax beta=nan": (lambda: soft_argmax(ROW, beta=math.nan), "soft_argmax", "beta"),
    "anneal total_steps=0": (lambda: anneal_temperature(0, 0), "anneal_temperature", "total_steps"),
    "anneal tau_min=0": (lambda: anneal_temperature(0, 10, tau_min=0.0), "anneal_temperature", "tau_min"),
    "anneal tau_min>tau0": (lambda: anneal_temperature(0, 10, tau0=0.1, tau_min=1.0), "anneal_temperature",
                            "tau_min"),
    "soft_threshold sharpness=0": (lambda: soft_threshold(ROW, 0.0, sharpness=0.0), "soft_threshold", "sharpness"),
    "soft_threshold sharpness<0": (lambda: soft_threshold(ROW, 0.0, sharpness=-5.0), "soft_threshold",
                                   "sharpness"),
    "quantize bits=0": (lambda: quantize(ROW, bits=0, low=0.0, high=1.0), "quantize", "bits"),
    "quantize bits=2.5": (lambda: quantize(ROW, bits=2.5, low=0.0, high=1.0), "quantize", "bits"),
    "quantize bits=True": (lambda: quantize(ROW, bits=True, low=0.0, high=1.0), "quantize", "bits"),
    "quantize low=high": (lambda: quantize(ROW, bits=2, low=1.0, high=1.0), "quantize", "low < high"),
    "quantize high=inf": (lambda: quantize(ROW, bits=2, low=0.0, high=math.inf), "quantize", "low < high"),
    "quantize low=nan": (lambda: quantize(ROW, bits=2, low=math.nan, high=1.0), "quantize", "low < high"),
    "soft_sort strength=0": (lambda: soft_sort(ROW, strength=0.0), "soft_sort", "strength"),
    "soft_sort strength<0": (lambda: soft_sort(ROW, strength=-1.0), "soft_sort", "strength"),
    "soft_sort strength=inf": (lambda: soft_sort(ROW, strength=math.inf), "soft_sort", "strength"),
    "soft_sort 0-d": (lambda: soft_sort(torch.tensor(1.0)), "soft_sort", "0-d"),
    "soft_rank strength=0": (lambda: soft_rank(ROW, strength=0.0), "soft_rank", "strength"),
    "soft_rank strength<0": (lambda: soft_rank(ROW, strength=-2.0), "soft_rank", "strength"),
    "soft_topk k=0": (lambda: soft_topk(ROW, k=0), "soft_topk", "0 < k < n = 4"),
    "soft_topk k=n": (lambda: soft_topk(ROW, k=4), "soft_topk", "0 < k < n = 4"),
    "soft_topk k<0": (lambda: soft_topk(ROW, k=-1), "soft_topk", "0 < k < n = 4"),
    "soft_topk k=2.5": (lambda: soft_topk(ROW, k=2.5), "soft_topk", "k must be an integer"),
    "soft_topk n=1": (lambda: soft_topk(torch.zeros(3, 1), k=1), "soft_topk", "n >= 2"),
    "soft_topk tau=0": (lambda: soft_topk(ROW, k=2, tau=0.0), "soft_topk", "tau"),
    "soft_topk tau<0": (lambda: soft_topk(ROW, k=2, tau=-0.5), "soft_topk", "tau"),
    "soft_nms sigma=0": (lambda: soft_nms(BOXES, torch.ones(2), sigma=0.0), "soft_nms", "sigma"),
    "soft_nms sigma<0": (lambda: soft_nms(BOXES, torch.ones(2), sigma=-0.5), "soft_nms", "sigma"),
    "soft_nms iou_threshold>1": (lambda: soft_nms(BOXES, torch.ones(2), method="linear", iou_threshold=1.5),
                                 "soft_nms", "iou_threshold"),
    "soft_nms method": (lambda: soft_nms(BOXES, torch.ones(2), method="hard"), "soft_nms", "method"),
    "SetCriterion num_classes=0": (lambda: SetCriterion(num_classes=0), "SetCriterion", "num_classes"),
    "SetCriterion eos_coef=0": (lambda: SetCriterion(num_classes=2, eos_coef=0.0), "SetCriterion", "eos_coef"),
    "SetCriterion l1_weight<0": (lambda: SetCriterion(num_classes=2, l1_weight=-1.0), "SetCriterion",
                                 "l1_weight"),
    "hungarian_match 1-D": (lambda: hungarian_match(torch.zeros(3)), "hungarian_match", "(N, M)"),
    "generalized_box_iou (N, 3)": (lambda: generalized_box_iou(BOXES[:, :3], BOXES), "generalized_box_iou",
                                   "(N, 4)"),
    "ctc_beam_decode beam=0": (lambda: ctc_beam_decode(LOG_PROBS, beam=0), "ctc_beam_decode", "beam"),
    "ctc_beam_decode beam=2.5": (lambda: ctc_beam_decode(LOG_PROBS, beam=2.5), "ctc_beam_decode", "beam"),
    "ctc_greedy_decode blank=C": (lambda: ctc_greedy_decode(LOG_PROBS, blank=3), "ctc_greedy_decode", "blank"),
    "ctc_greedy_decode blank<0": (lambda: ctc_greedy_decode(LOG_PROBS, blank=-1), "ctc_greedy_decode", "blank"),
    "affine_crop size=0": (lambda: affine_crop(IMAGES, CROP_BOX, size=0), "affine_crop", "size"),
    "affine_crop size=(2,)": (lambda: affine_crop(IMAGES, CROP_BOX, size=(2,)), "affine_crop", "size"),
    "affine_crop size=(2.0, 2)": (lambda: affine_crop(IMAGES, CROP_BOX, size=(2.0, 2)), "affine_crop", "size"),
    "affine_crop size=(-1, 2)": (lambda: affine_crop(IMAGES, CROP_BOX, size=(-1, 2)), "affine_crop", "size"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_a_bad_argument_is_one_usage_error_line_naming_it(case):
    call, function, named = BAD_ARGUMENTS[case]
    with pytest.raises(UsageError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{function}: ")
    assert named in message
    assert "got" in message  # says what it received


def test_limits_that_are_still_valid_keep_working():
    x = torch.tensor([[0.0, 5.0, 0.0, 0.0]])
    assert soft_argmax(x, beta=0.0).item() == pytest.approx(1.5)  # beta = 0: the mean index
    y = soft_nms(BOXES, torch.tensor([0.9, 0.8]), method="linear", iou_threshold=0.0)
    assert y[1].item() == pytest.approx(0.8 * (1 - 1 / 7))  # threshold 0: every overlap decays
    assert quantize(ROW, bits=1, low=-1.0, high=1.0).tolist() == [[1.0, -1.0, 1.0, 1.0]]
    criterion = SetCriterion(num_classes=1, l1_weight=0.0)  # a zero weight drops a term
    assert criterion.l1_weight == 0.0


def test_numpy_and_tensor_temperatures_are_accepted_and_equal_the_float():
    def sample(tau):
        return gumbel_softmax(ROW, tau=tau, generator=torch.Generator().manual_seed(0))

    torch.testing.assert_close(sample(np.float32(0.5)), sample(0.5))
    torch.testing.assert_close(sample(torch.tensor(0.5)), sample(0.5))
    torch.testing.assert_close(soft_topk(ROW, k=np.int64(2), tau=0.5), soft_topk(ROW, k=2, tau=0.5))


@pytest.mark.parametrize("call, name", [
    (lambda: relax.gumbel_softmax([1.0, 2.0]), "gumbel_softmax: logits"),
    (lambda: relax.straight_through_argmax([[1.0, 2.0]]), "straight_through_argmax: logits"),
    (lambda: relax.soft_sort([3.0, 1.0]), "soft_sort: x"),
    (lambda: relax.straight_through_round(1.5), "straight_through_round: x"),
    (lambda: relax.reparameterize([0.0], [0.0]), "reparameterize: mu"),
    (lambda: relax.generalized_box_iou([[0, 0, 1, 1]], [[0, 0, 1, 1]]), "generalized_box_iou: boxes1"),
])
def test_a_list_where_a_tensor_is_expected_is_one_line(call, name):
    with pytest.raises(UsageError, match=f"^{name} must be a torch.Tensor, got"):
        call()
