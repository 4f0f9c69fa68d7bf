"""Which differentiable relaxation replaces which graph-cutting op.

The audit (`endtoend.audit`) reports cuts by op name (`argmax`, `Tensor.round`,
`gt`, `max.indices` for the index output of `max(dim)`, ...); `fix_for(op)` turns that
name into the advice shown in the finding's `fix` field. Every spelling the audit emits
for an op of a family here resolves (tests/relax/test_registry.py audits each one).
docs/relax.md is generated from `RELAXATIONS`, `CUTS` and `DESCRIPTIONS` (see
`tools/gen_relax_docs.py`). Every name here is a public function of `endtoend.relax`
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
    # Integer positions of a selection: keep every element and weight it by a soft mask.
    "nonzero": ("soft_threshold", "soft_topk"),
    # Distinct values: compare against a fixed set of values instead.
    "unique": ("soft_threshold", "straight_through_argmax"),
    # isnan/isinf/isfinite: guards, not learning signals (see ADVICE).
    "nonfinite_check": ("soft_threshold",),
}

# Why each family cuts the graph: one line per family, shown in docs/relax.md.
CUTS: dict[str, str] = {
    "argmax": "returns an integer index; integers carry no gradient",
    "argmin": "returns an integer index; integers carry no gradient",
    "max_indices": "the indices of max/min/cummax/cummin (dim=...) and of mode (the argmax of the value counts) "
                   "are integers; only the values are differentiable",
    "one_hot": "takes integer classes, so whatever produced them is already cut off",
    "round": "piecewise constant: the gradient is zero almost everywhere",
    "floor": "piecewise constant: the gradient is zero almost everywhere",
    "ceil": "piecewise constant: the gradient is zero almost everywhere",
    "trunc": "piecewise constant: the gradient is zero almost everywhere",
    "sign": "piecewise constant: the gradient is zero almost everywhere",
    "comparison": "returns booleans; a hard mask or gate has no gradient with respect to x or t "
                  "(combine soft gates a, b as a * b, a + b - a * b, 1 - a for logical_and, logical_or, logical_not)",
    "bucketize": "returns bucket indices (integers), or counts per bucket (histc) without a gradient",
    "sort_indices": "the permutation (and ranks built from it) and the positions of order statistics "
                    "(kthvalue, median) are integers; the sorted values alone keep a gradient",
    "topk_indices": "the selected indices, and masks built from them, are integers",
    "sample": "a sample drawn by torch.normal / Distribution.sample has zero gradient wrt its parameters",
    "bernoulli": "draws 0/1 values with zero gradient wrt the probabilities",
    "multinomial": "draws integer classes with no gradient wrt the probabilities",
    "nms": "deletes boxes by index: suppressed boxes get no training signal",
    "integer_cast": "casting to an integer or bool dtype leaves autograd",
    "integer_index": "indexing with computed integers (crops, gathers) gives no gradient to the positions",
    "nonzero": "nonzero, argwhere and one-argument where return the integer positions of a selection "
               "(count_nonzero its size): the selection gets no gradient; weight every element by a soft mask",
    "unique": "the inverse indices and counts are integers and the distinct values have no derivative; "
              "compare with a fixed set of values: soft counts from soft_threshold, one-hot assignments "
              "from straight_through_argmax",
    "nonfinite_check": "returns booleans; as a guard (torch.where(torch.isfinite(x), x, 0), torch.nan_to_num) "
                       "it starves nothing that should learn, so only a gate learned through the test needs a "
                       "relaxation",
}

# Families whose fix needs a word before the relaxations: fix_for puts it first.
ADVICE: dict[str, str] = {
    "nonfinite_check": "a NaN/Inf test is a guard, not a learning signal: keep the values' gradient with "
                       "torch.where(torch.isfinite(x), x, 0) or torch.nan_to_num(x); for a learned gate",
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
    "cummax.indices": "max_indices", "cummin.indices": "max_indices", "mode.indices": "max_indices",
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
    "isclose": "comparison", "isin": "comparison", "signbit": "comparison",
    "logical_and": "comparison", "logical_or": "comparison", "logical_not": "comparison",
    "logical_xor": "comparison",
    "bucketize": "bucketize", "searchsorted": "bucketize", "histc": "bucketize",
    "sort": "sort_indices", "argsort": "sort_indices", "msort": "sort_indices",
    "sort.indices": "sort_indices", "kthvalue.indices": "sort_indices", "median.indices": "sort_indices",
    "nanmedian.indices": "sort_indices",
    "topk": "topk_indices", "topk.indices": "topk_indices",
    "normal": "sample", "normal_": "sample", "randn_like": "sample", "rand_like": "sample",
    "sample": "sample",
    "bernoulli": "bernoulli", "multinomial": "multinomial",
    # A cut under no_grad is looked up by the torch function that disabled grad.
    "Bernoulli.sample": "bernoulli",
    "nms": "nms", "batched_nms": "nms",
    "long": "integer_cast", "int": "integer_cast", "short": "integer_cast", "byte": "integer_cast",
    "bool": "integer_cast", "char": "integer_cast", "to_integer": "integer_cast",
    "index_integer": "integer_index", "integer_index": "integer_index",
    # `where` cuts only in its one-argument form, torch.where(x) == x.nonzero(as_tuple=True).
    "nonzero": "nonzero", "argwhere": "nonzero", "where": "nonzero", "nonzero_static": "nonzero",
    "count_nonzero": "nonzero",
    "unique": "unique", "unique_consecutive": "unique",
    "unique.indices": "unique", "unique_consecutive.indices": "unique",
    "isnan": "nonfinite_check", "isinf": "nonfinite_check", "isfinite": "nonfinite_check",
    "isneginf": "nonfinite_check", "isposinf": "nonfinite_check",
}


def _known(name: str) -> str | None:
    """The family of one spelling, also in its in-place form ("round_") and as a dunder with
    its trailing underscores stripped ("__eq" for "__eq__")."""
    if name in _ALIASES:
        return _ALIASES[name]
    if name.startswith("__"):
        return _ALIASES.get(name.rstrip("_") + "__")
    if name.endswith("_"):
        return _ALIASES.get(name.rstrip("_"))
    return None


def _family(op: str) -> str | None:
    parts = op.replace("::", ".").split(".")
    # Qualified spellings: the longest known tail first ("Tensor.max.indices" is "max.indices",
    # "torch.Tensor.round" is "round"), then any known part ("aten.round.default").
    for start in range(len(parts)):
        family = _known(".".join(parts[start:]))
        if family:
            return family
    for part in reversed(parts):
        family = _known(part)
        if family:
            return family
    return None


def relaxations_for(op: str) -> tuple[str, ...]:
    """The `endtoend.relax` functions that replace `op`, best first (empty if none)."""
    family = _family(op)
    return RELAXATIONS.get(family, ()) if family else ()


def fix_for(op: str) -> str | None:
    """One line of advice for a cut made by `op`, or None when no relaxation applies."""
    family = _family(op)
    names = RELAXATIONS.get(family, ()) if family else ()
    if not names:
        return None
    use = "use " + " or ".join(f"endtoend.relax.{n}" for n in names)
    return f"{ADVICE[family]}, {use}" if family in ADVICE else use
