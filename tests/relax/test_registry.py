import doctest
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import torch

import endtoend.relax as relax
from endtoend.audit import audit
from endtoend.relax import RELAXATIONS, fix_for, registry, relaxations_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "audit"))
import zoo_broken  # noqa: E402
FAMILY_MODULES = ["discrete", "rounding", "sampling", "ordering", "sets", "sequences", "spatial"]
REGISTRY_NAMES = {"RELAXATIONS", "fix_for", "relaxations_for"}


def public_relaxations() -> set[str]:
    return set(relax.__all__) - REGISTRY_NAMES


def test_every_registered_name_is_a_real_function_of_endtoend_relax():
    for family, names in RELAXATIONS.items():
        assert names, family
        for name in names:
            assert name in relax.__all__ and callable(getattr(relax, name)), (family, name)


def test_every_family_explains_its_cut_and_every_function_is_described():
    assert set(registry.CUTS) == set(RELAXATIONS)
    assert set(registry.DESCRIPTIONS) == public_relaxations()
    assert set(registry._ALIASES.values()) <= set(RELAXATIONS)


@pytest.mark.parametrize("op, first", [
    ("argmax", "straight_through_argmax"),
    ("Tensor.argmax", "straight_through_argmax"),
    ("torch.Tensor.round", "straight_through_round"),
    ("aten.round.default", "straight_through_round"),
    ("aten::gt.Tensor", "soft_threshold"),
    ("__gt__", "soft_threshold"),
    ("floor_", "straight_through_round"),
    ("torch.topk", "soft_topk"),
    ("torch.normal", "reparameterize"),
    ("torchvision.ops.nms", "soft_nms"),
    # The index output of a (values, indices) op, as the audit spells it and as it shows it.
    ("max.indices", "straight_through_argmax"),
    ("Tensor.max.indices", "straight_through_argmax"),
    ("Tensor.topk.indices", "soft_topk"),
    ("kthvalue.indices", "soft_sort"),
    ("Tensor.median.indices", "soft_sort"),
    ("nanmedian.indices", "soft_sort"),
    ("mode.indices", "straight_through_argmax"),
    ("cummax.indices", "straight_through_argmax"),
    ("Tensor.cummin.indices", "straight_through_argmax"),
    ("unique.indices", "soft_threshold"),
    ("unique_consecutive.indices", "soft_threshold"),
    ("Tensor.nonzero", "soft_threshold"),
    ("argwhere", "soft_threshold"),
    ("isclose", "soft_threshold"),
    ("Tensor.logical_xor", "soft_threshold"),
    # Dunder spellings resolve too (the audit itself reports `a == b` as Tensor.eq).
    ("__eq", "soft_threshold"),
    ("Tensor.__eq__", "soft_threshold"),
    ("Bernoulli.sample", "relaxed_bernoulli"),
])
def test_op_spellings_resolve_to_their_relaxations(op, first):
    assert relaxations_for(op)[0] == first
    assert fix_for(op).startswith(f"use endtoend.relax.{first}")


def test_ops_without_a_relaxation_get_no_fix():
    assert relaxations_for("relu") == ()
    assert fix_for("relu") is None
    assert fix_for("detach") is None
    # Only the index output of these is a cut; their values keep a gradient.
    for op in ("kthvalue", "median", "mode", "cummax", "Tensor.max", "div", "Linear.forward"):
        assert fix_for(op) is None, op


def test_nan_and_inf_tests_are_advised_as_guards_first():
    for op in ("isnan", "Tensor.isinf", "isfinite", "isposinf", "isneginf"):
        fix = fix_for(op)
        assert fix.startswith("a NaN/Inf test is a guard, not a learning signal"), op
        assert "torch.where(torch.isfinite(x), x, 0)" in fix and fix.endswith("use endtoend.relax.soft_threshold")


# ----------------------------------------------------------------------------- what the audit emits


Front = zoo_broken.Front


def one_hot_at(h, index):
    return torch.zeros_like(h).scatter(-1, index.unsqueeze(-1), 1.0)


def mark(h, positions):
    return torch.zeros_like(h).index_put(tuple(positions), torch.tensor(1.0))


def expand(h, column):
    return column.float().unsqueeze(-1).expand_as(h)


# (the finding's op, the family whose relaxations its fix must name, a cut made by that op)
EMITTED = [
    ("Tensor.argmax", "argmax", lambda h: one_hot_at(h, h.argmax(-1))),
    ("argmin", "argmin", lambda h: one_hot_at(h, torch.argmin(h, -1))),
    ("Tensor.max.indices", "max_indices", lambda h: one_hot_at(h, h.max(-1).indices)),
    ("min.indices", "max_indices", lambda h: one_hot_at(h, torch.min(h, -1)[1])),
    ("Tensor.mode.indices", "max_indices", lambda h: one_hot_at(h, h.mode(-1).indices)),
    ("Tensor.cummax.indices", "max_indices", lambda h: h.cummax(-1).indices.float()),
    ("cummin.indices", "max_indices", lambda h: torch.cummin(h, -1)[1].float()),
    ("Tensor.kthvalue.indices", "sort_indices", lambda h: one_hot_at(h, h.kthvalue(2, -1).indices)),
    ("median.indices", "sort_indices", lambda h: one_hot_at(h, torch.median(h, -1)[1])),
    ("Tensor.nanmedian.indices", "sort_indices", lambda h: one_hot_at(h, h.nanmedian(-1).indices)),
    ("Tensor.sort.indices", "sort_indices", lambda h: h.sort(-1).indices.float()),
    ("argsort", "sort_indices", lambda h: torch.argsort(h, -1, descending=True).float()),
    ("Tensor.topk.indices", "topk_indices", lambda h: one_hot_at(h, h.topk(1, -1).indices[:, 0])),
    ("Tensor.nonzero", "nonzero", lambda h: mark(h, torch.relu(h).nonzero().T)),
    ("argwhere", "nonzero", lambda h: mark(h, torch.argwhere(torch.relu(h)).T)),
    ("where", "nonzero", lambda h: mark(h, torch.where(torch.relu(h)))),
    ("count_nonzero", "nonzero", lambda h: expand(h, torch.count_nonzero(torch.relu(h), -1))),
    ("unique.indices", "unique", lambda h: torch.unique(h, return_inverse=True)[1].float()),
    ("Tensor.unique_consecutive.indices", "unique", lambda h: h.unique_consecutive(return_inverse=True)[1].float()),
    ("isnan", "nonfinite_check", lambda h: torch.isnan(torch.log(h)).float()),
    ("Tensor.isinf", "nonfinite_check", lambda h: (1 / h).isinf().float()),
    ("isfinite", "nonfinite_check", lambda h: torch.isfinite(torch.log(h)).float()),
    ("isclose", "comparison", lambda h: torch.isclose(h, torch.zeros_like(h), atol=0.5).float()),
    ("logical_and", "comparison", lambda h: torch.logical_and(h, h - 0.5).float()),
    ("logical_or", "comparison", lambda h: torch.logical_or(h, h - 0.5).float()),
    ("logical_not", "comparison", lambda h: torch.logical_not(torch.relu(h)).float()),
    ("Tensor.logical_xor", "comparison", lambda h: h.logical_xor(torch.relu(h)).float()),
    ("Tensor.gt", "comparison", lambda h: (h > 0).float()),
    ("Tensor.eq", "comparison", lambda h: (h == h.roll(1, -1)).float()),
    ("round", "round", torch.round),
    ("Tensor.floor", "floor", lambda h: h.floor()),
    ("ceil", "ceil", torch.ceil),
    ("Tensor.trunc", "trunc", lambda h: h.trunc()),
    ("sign", "sign", torch.sign),
    ("Tensor.long", "integer_cast", lambda h: h.long().float()),
    ("bucketize", "bucketize", lambda h: torch.bucketize(h, torch.tensor([0.0, 1.0])).float()),
    ("searchsorted", "bucketize", lambda h: torch.searchsorted(torch.tensor([0.0, 1.0]), h).float()),
    ("histc", "bucketize", lambda h: torch.histc(h, 6).expand_as(h)),
    ("multinomial", "multinomial", lambda h: one_hot_at(h, torch.multinomial(h.softmax(-1), 1)[:, 0])),
]


@pytest.mark.parametrize("op, family, cut", EMITTED, ids=[case[0] for case in EMITTED])
def test_every_cut_the_audit_emits_for_a_family_gets_its_fix(op, family, cut):
    report = audit(Front(cut), torch.randn(8, 4, generator=torch.Generator().manual_seed(1)))
    (finding,) = [f for f in report.findings if f.kind == "cut" and f.op == op]
    assert finding.severity == "error" and finding.parameters == ["front.bias", "front.weight"], report
    assert relaxations_for(op) == RELAXATIONS[family]  # the op as shown resolves too
    assert finding.fix == fix_for(op)
    assert all(f"endtoend.relax.{name}" in finding.fix for name in RELAXATIONS[family])


def test_every_relaxable_cut_in_the_audit_zoo_gets_a_fix():
    checked = set()
    for case, make in zoo_broken.CASES.items():
        torch.manual_seed(0)
        model, inputs, *_ = make()
        for finding in audit(model, inputs).findings:
            names = relaxations_for(finding.op) if finding.kind == "cut" else ()
            if finding.severity == "error" and names:
                assert finding.fix, (case, finding)
                assert all(f"endtoend.relax.{name}" in finding.fix for name in names), (case, finding)
                checked.add(case)
    assert checked >= {"argmax", "round", "long", "mask", "branch", "sign", "topk"}


def test_fix_lists_every_relaxation_by_its_full_name():
    assert fix_for("argmax") == ("use endtoend.relax.straight_through_argmax or "
                                 "endtoend.relax.gumbel_softmax or endtoend.relax.soft_argmax")


def test_every_public_function_documents_math_source_shapes_and_an_example():
    for name in public_relaxations():
        doc = inspect.getdoc(getattr(relax, name))
        for key in ("Math:", "Source:", "Shapes:", "Example:", ">>> "):
            assert key in doc, (name, key)


@pytest.mark.parametrize("module", FAMILY_MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(f"endtoend.relax.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def load_doc_generator():
    spec = importlib.util.spec_from_file_location("gen_relax_docs", ROOT / "tools" / "gen_relax_docs.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


def test_docs_relax_md_is_up_to_date():
    committed = (ROOT / "docs" / "relax.md").read_text(encoding="utf-8")
    assert load_doc_generator().render() == committed, "run: .venv/bin/python tools/gen_relax_docs.py"


def test_docs_list_every_function_with_its_example_and_the_op_table():
    text = (ROOT / "docs" / "relax.md").read_text(encoding="utf-8")
    assert "| op | reported as | why it cuts the graph | use instead |" in text
    for family in RELAXATIONS:
        assert f"\n| {family} |" in text
    for name in public_relaxations():
        section = text.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert ">>> " in section and "**Math**" in section, name
