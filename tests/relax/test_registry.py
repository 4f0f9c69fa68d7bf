import doctest
import importlib.util
import inspect
from pathlib import Path

import pytest

import endtoend.relax as relax
from endtoend.relax import RELAXATIONS, fix_for, registry, relaxations_for

ROOT = Path(__file__).resolve().parents[2]
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
])
def test_op_spellings_resolve_to_their_relaxations(op, first):
    assert relaxations_for(op)[0] == first
    assert fix_for(op).startswith(f"use endtoend.relax.{first}")


def test_ops_without_a_relaxation_get_no_fix():
    assert relaxations_for("relu") == ()
    assert fix_for("relu") is None
    assert fix_for("detach") is None


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
