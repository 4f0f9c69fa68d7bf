"""Which differentiable relaxation replaces which graph-cutting op.

The audit (`endtoend.audit`) reports cuts by op name (`argmax`, `Tensor.round`,
`gt`, ...); `fix_for(op)` turns that name into the advice shown in the finding's
`fix` field. docs/relax.md is generated from `RELAXATIONS` (see `tools/gen_relax_docs.py`).
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
    "sort_indices": ("soft_sort", "soft_rank"),
    "topk_indices": ("soft_topk",),
    "sample": ("reparameterize", "gumbel_softmax", "relaxed_bernoulli"),
    "bernoulli": ("relaxed_bernoulli",),
    "multinomial": ("gumbel_softmax",),
    "nms": ("soft_nms", "hungarian_match + SetCriterion"),
    "integer_cast": ("straight_through_round", "quantize"),
    "integer_index": ("affine_crop", "soft_argmax"),
}

_ALIASES: dict[str, str] = {
    "argmax": "argmax", "Tensor.argmax": "argmax", "torch.argmax": "argmax",
    "argmin": "argmin", "Tensor.argmin": "argmin", "torch.argmin": "argmin",
    "max.indices": "max_indices", "min.indices": "max_indices",
    "one_hot": "one_hot", "torch.nn.functional.one_hot": "one_hot",
    "round": "round", "Tensor.round": "round", "torch.round": "round",
    "floor": "floor", "Tensor.floor": "floor", "torch.floor": "floor",
    "ceil": "ceil", "Tensor.ceil": "ceil", "torch.ceil": "ceil",
    "trunc": "trunc", "Tensor.trunc": "trunc", "torch.trunc": "trunc",
    "sign": "sign", "Tensor.sign": "sign", "torch.sign": "sign",
    "gt": "comparison", "ge": "comparison", "lt": "comparison", "le": "comparison",
    "eq": "comparison", "ne": "comparison",
    "sort": "sort_indices", "argsort": "sort_indices",
    "topk": "topk_indices",
    "normal": "sample", "randn_like": "sample", "rand_like": "sample",
    "bernoulli": "bernoulli", "multinomial": "multinomial",
    "nms": "nms", "batched_nms": "nms",
    "long": "integer_cast", "int": "integer_cast", "to_integer": "integer_cast",
}


def _family(op: str) -> str | None:
    if op in _ALIASES:
        return _ALIASES[op]
    # Accept qualified spellings such as "torch.Tensor.round" or "aten.round.default".
    for part in reversed(op.replace("::", ".").split(".")):
        if part in _ALIASES:
            return _ALIASES[part]
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
