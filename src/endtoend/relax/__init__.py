"""Differentiable replacements for the ops that cut the gradient graph.

One module per family; `registry.fix_for(op)` says which of these replaces a cut that
`endtoend.audit` reports. See docs/relax.md (generated from the docstrings below).
"""

from endtoend.relax.discrete import (
    anneal_temperature,
    gumbel_softmax,
    relaxed_bernoulli,
    soft_argmax,
    straight_through_argmax,
)
from endtoend.relax.ordering import soft_rank, soft_sort, soft_topk
from endtoend.relax.registry import RELAXATIONS, fix_for, relaxations_for
from endtoend.relax.rounding import quantize, soft_threshold, straight_through_round, straight_through_sign
from endtoend.relax.sampling import gaussian_kl, reparameterize
from endtoend.relax.sequences import ctc_beam_decode, ctc_greedy_decode
from endtoend.relax.sets import SetCriterion, generalized_box_iou, hungarian_match, soft_nms
from endtoend.relax.spatial import affine_crop

__all__ = [
    "RELAXATIONS",
    "SetCriterion",
    "affine_crop",
    "anneal_temperature",
    "ctc_beam_decode",
    "ctc_greedy_decode",
    "fix_for",
    "gaussian_kl",
    "generalized_box_iou",
    "gumbel_softmax",
    "hungarian_match",
    "quantize",
    "relaxations_for",
    "relaxed_bernoulli",
    "reparameterize",
    "soft_argmax",
    "soft_nms",
    "soft_rank",
    "soft_sort",
    "soft_threshold",
    "soft_topk",
    "straight_through_argmax",
    "straight_through_round",
    "straight_through_sign",
]
