"""Which differentiable relaxation replaces which graph-cutting op.

The audit (`endtoend.audit`) reports cuts by op name (`argmax`, `Tensor.round`,
`gt`, ...); `fix_for(op)` turns that name into the advice shown in the finding's
`fix` field. docs/relax.md is generated from `RELAXATIONS`, `CUTS` and `DESCRIPTIONS`
(see `tools/gen_relax_docs.py`). Every name here is a public function of `endtoend.relax`
(tests/relax/test_registry.py checks it).
"""

from __future__ import annotations

# Keys are op families; `_ALIASES` maps the many spellings torch has for them.
RELAXATIONS: dict[str, tuple[str, ...]] = {
    "argmax": ("straight_through_argmax", "gumbel_softmax", "soft_argmax"),
    "argmin": ("straight_through_argmax", "soft_argmax"),
    "max_indices": ("straight_through_argmax", "soft_argmax"),
    "one_hot": ("straight_through_argmax", "gumbel_softmax"),
    "round": ("straight_through_round", "quantize"),
    "floor": ("straight_through_round", "quantize"),
    "ceil": ("straight_through_round", "quantize"),
    "trunc": ("straight_through_round", "quantize"),
    "sign": ("straight_through_sign",),
    "comparison": ("soft_threshold", "straight_through_sign"),
    "bucketize": ("quantize", "soft_threshold"),
    "sort_indices": ("soft_sort", "soft_rank"),
    "topk_indices": ("soft_topk",),
    "sample": ("reparameterize", "gumbel_softmax", "relaxed_bernoulli"),
    "bernoulli": ("relaxed_bernoulli",),
    "multinomial": ("gumbel_softmax",),
    "nms": ("soft_nms", "SetCriterion"),
    "integer_cast": ("straight_through_round", "quantize"),
    "integer_index": ("affine_crop", "soft_argmax"),
}

# Why each family cuts the graph: one line per family, shown in docs/relax.md.
CUTS: dict[str, str] = {
    "argmax": "returns an integer index; integers carry no gradient",
    "argmin": "returns an integer index; integers carry no gradient",
    "max_indices": "the indices of max/min (dim=...) are integers; only the values are differentiable",
    "one_hot": "takes integer classes, so whatever produced them is already cut off",
    "round": "piecewise constant: the gradient is zero almost everywhere",
    "floor": "piecewise constant: the gradient is zero almost everywhere",
    "ceil": "piecewise constant: the gradient is zero almost everywhere",
    "trunc": "piecewise constant: the gradient is zero almost everywhere",
    "sign": "piecewise constant: the gradient is zero almost everywhere",
    "comparison": "returns booleans; a hard mask or gate has no gradient with respect to x or t",
    "bucketize": "returns bucket indices (integers)",
    "sort_indices": "the permutation (and ranks built from it) are integers; sorted values alone keep a gradient",
    "topk_indices": "the selected indices, and masks built from them, are integers",
    "sample": "a sample drawn by torch.normal / Distribution.sample has zero gradient wrt its parameters",
    "bernoulli": "draws 0/1 values with zero gradient wrt the probabilities",
    "multinomial": "draws integer classes with no gradient wrt the probabilities",
    "nms": "deletes boxes by index: suppressed boxes get no training signal",
    "integer_cast": "casting to an integer or bool dtype leaves autograd",
    "integer_index": "indexing with computed integers (crops, gathers) gives no gradient to the positions",
}

# What each relaxation does, in one line; shown in docs/relax.md next to the op table.
DESCRIPTIONS: dict[str, str] = {
    "gumbel_softmax": "differentiable categorical sample; `hard=True` gives an exact one-hot",
    "anneal_temperature": "exponential temperature schedule for gumbel_softmax",
    "straight_through_argmax": "one-hot argmax forward, softmax gradient backward",
    "soft_argmax": "expected index under a softmax (a fractional argmax)",
    "relaxed_bernoulli": "differentiable Bernoulli sample (binary Concrete)",
    "straight_through_round": "round forward, identity gradient backward",
    "straight_through_sign": "sign forward, clipped identity gradient backward",
    "quantize": "uniform k-bit quantisation with a straight-through gradient",
    "soft_threshold": "sigmoid gate in place of x > t (gradient to x and t)",
    "reparameterize": "Gaussian sample mu + sigma * eps, differentiable in mu and sigma",
    "gaussian_kl": "KL(N(mu, sigma^2) || N(0, I)), the VAE regulariser",
    "soft_sort": "sorted values as a smooth function of x (Blondel et al. 2020)",
    "soft_rank": "ranks as a smooth function of x (Blondel et al. 2020)",
    "soft_topk": "soft top-k mask, rows sum to k (Amos et al. 2019)",
    "hungarian_match": "optimal one-to-one matching (indices, used under no_grad)",
    "generalized_box_iou": "pairwise GIoU, a box overlap with a gradient even when disjoint",
    "SetCriterion": "DETR set loss: Hungarian matching + class, L1 and GIoU losses; no NMS",
    "soft_nms": "decays overlapping boxes' scores instead of deleting the boxes",
    "ctc_greedy_decode": "best-path CTC decoding (not differentiable: train with F.ctc_loss)",
    "ctc_beam_decode": "prefix beam search CTC decoding (not differentiable: train with F.ctc_loss)",
    "affine_crop": "crop and resize by bilinear sampling, differentiable in the box",
}

_ALIASES: dict[str, str] = {
    "argmax": "argmax", "Tensor.argmax": "argmax", "torch.argmax": "argmax",
    "argmin": "argmin", "Tensor.argmin": "argmin", "torch.argmin": "argmin",
    "max.indices": "max_indices", "min.indices": "max_indices",
    "max_indices": "max_indices", "min_indices": "max_indices",
    "one_hot": "one_hot", "torch.nn.functional.one_hot": "one_hot",
    "round": "round", "Tensor.round": "round", "torch.round": "round",
    "floor": "floor", "Tensor.floor": "floor", "torch.floor": "floor",
    "floor_divide": "floor", "__floordiv__": "floor", "__rfloordiv__": "floor",
    "ceil": "ceil", "Tensor.ceil": "ceil", "torch.ceil": "ceil",
    "trunc": "trunc", "Tensor.trunc": "trunc", "torch.trunc": "trunc", "fix": "trunc",
    "sign": "sign", "Tensor.sign": "sign", "torch.sign": "sign", "sgn": "sign",
    "heaviside": "comparison",
    "gt": "comparison", "ge": "comparison", "lt": "comparison", "le": "comparison",
    "eq": "comparison", "ne": "comparison",
    "greater": "comparison", "greater_equal": "comparison", "less": "comparison",
    "less_equal": "comparison", "not_equal": "comparison",
    "__gt__": "comparison", "__ge__": "comparison", "__lt__": "comparison", "__le__": "comparison",
    "__eq__": "comparison", "__ne__": "comparison",
    "bucketize": "bucketize", "searchsorted": "bucketize",
    "sort": "sort_indices", "argsort": "sort_indices", "msort": "sort_indices",
    "topk": "topk_indices",
    "normal": "sample", "normal_": "sample", "randn_like": "sample", "rand_like": "sample",
    "sample": "sample",
    "bernoulli": "bernoulli", "multinomial": "multinomial",
    "nms": "nms", "batched_nms": "nms",
    "long": "integer_cast", "int": "integer_cast", "short": "integer_cast", "byte": "integer_cast",
    "bool": "integer_cast", "to_integer": "integer_cast",
    "index_integer": "integer_index", "integer_index": "integer_index",
}


def _family(op: str) -> str | None:
    if op in _ALIASES:
        return _ALIASES[op]
    # Accept qualified spellings such as "torch.Tensor.round" or "aten.round.default",
    # and in-place variants such as "round_".
    for part in reversed(op.replace("::", ".").split(".")):
        if part in _ALIASES:
            return _ALIASES[part]
        if part.endswith("_") and not part.startswith("__") and part[:-1] in _ALIASES:
            return _ALIASES[part[:-1]]
    return None


def relaxations_for(op: str) -> tuple[str, ...]:
    """The `endtoend.relax` functions that replace `op`, best first (empty if none)."""
    family = _family(op)
    return RELAXATIONS.get(family, ()) if family else ()


def fix_for(op: str) -> str | None:
    """One line of advice for a cut made by `op`, or None when no relaxation applies."""
    names = relaxations_for(op)
    if not names:
        return None
    return "use " + " or ".join(f"endtoend.relax.{n}" for n in names)
