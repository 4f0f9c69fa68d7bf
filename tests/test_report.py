"""The comparison page (write_comparison_report) from hand-built comparison dicts: which sections
appear for which optional keys, the wording, escaping, and the edge cases that must not crash."""

import re

import numpy as np
import pytest
import torch

from endtoend.report import write_comparison_report
from endtoend.report.comparison import _bar_limits

SECTIONS = ["<h2>Test ", "<table>", "<h2>Learning curves</h2>", "<h2>Latency</h2>",
            "<h2>Regimes and linear probes</h2>", "<h2>Gallery</h2>"]


def row(name, value, std=0.0, values=None, kind="staged", **extra):
    values = values if values is not None else [value]
    return {"pipeline": name, "kind": kind, "value": value, "std": std, "values": values,
            "metrics": {"accuracy": value, "macro_f1": 0.5}, "train_seconds": 1.25,
            "predict_ms_per_item": 0.5, "items_per_second": 4000.0, "parameters": 1234, **extra}


def failed_row(name, message, kind="staged"):
    return {"pipeline": name, "kind": kind, "value": None, "failed": message}


def comparison(rows, **extra):
    return {"recipe": "digits", "description": "8x8 handwritten digits", "metric": "accuracy",
            "higher_is_better": True, "seeds": [0], "budgets": [1.0], "small": True, "torch": "2.13",
            "rows": rows, "end_to_end_run": "out/end-to-end", **extra}


def two_seed_rows():
    return [row("logistic regression", 0.91, 0.004, [0.906, 0.914]),
            row("PCA + SVM", 0.95, 0.002, [0.948, 0.952]),
            row("end-to-end CNN", 0.98, 0.003, [0.977, 0.983], kind="end-to-end")]


def curves(names, budgets=(0.05, 0.25, 1.0), items=(6, 31, 125)):
    return {n: [{"budget": b, "items": k, "value": 0.5 + 0.4 * b + 0.01 * i, "std": 0.01}
                for b, k in zip(budgets, items)] for i, n in enumerate(names)}


def gallery(names, count=14):
    return [{"index": i, "target": i % 10, "predictions": {n: (i + j) % 10 for j, n in enumerate(names)}}
            for i in range(count)]


def write(tmp_path, comp, images=None):
    path = write_comparison_report(tmp_path, comp, images)
    assert path == tmp_path / "report.html"
    return path.read_text()


def body(page):
    return page.split("<body>", 1)[1]  # past the style sheet, which names every css class


def results_table(page):
    return re.search(r"<table>.*?</table>", page).group(0)


def images_in(page):
    return len(re.findall(r"<img ", page))


def test_every_section_in_order_with_all_optional_keys(tmp_path):
    rows = [*two_seed_rows(), row("regime: joint", 0.97, kind="end-to-end", probes={"features": 0.9, "head": 0.97})]
    names = [r["pipeline"] for r in rows]
    comp = comparison(rows, seeds=[0, 1], budgets=[0.05, 0.25, 1.0], learning_curves=curves(names),
                      crossover={"budget": 0.25, "items": 31, "text": "The CNN overtakes PCA + SVM at 31 items."},
                      gallery=gallery(names))
    images = (np.random.default_rng(0).random((20, 3, 8, 8)) * 255).astype(np.uint8)
    page = write(tmp_path, comp, images)
    positions = [page.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert images_in(page) == 4  # metric bars, learning curves, latency, gallery
    assert "higher is better" in page and "lower is better" not in page
    assert "test accuracy" in page.lower() and "8x8 handwritten digits" in page and "seeds 0, 1" in page
    assert "0.98 ± 0.003" in page and "0.977, 0.983" in page and "accuracy per seed" in page
    table = results_table(page)  # the primary metric has its own column, not one among the extras
    assert "<th>macro_f1</th>" in table and "<th>accuracy</th>" not in table
    assert '<td class="best">0.98 ± 0.003</td>' in page
    assert '<p class="crossover">The CNN overtakes PCA + SVM at 31 items.</p>' in page
    assert "test inputs where the pipelines disagree" in page
    assert "A: logistic regression; B: PCA + SVM; C: end-to-end CNN; D: regime: joint" in page
    assert "<td>0.9000</td>" in page  # the linear probe, formatted as before


def test_one_row_one_seed_no_curves_no_gallery(tmp_path):
    page = write(tmp_path, comparison([row("end-to-end CNN", 0.9, kind="end-to-end")]))
    for absent in ("Learning curves", "Gallery", "Regimes and linear probes", "crossover", "per seed", "±", "best"):
        assert absent not in body(page)
    assert images_in(page) == 2  # metric bars and latency
    assert "0 staged pipelines and 1 end-to-end model" in page and "seed 0" in page


def test_failed_rows_show_the_escaped_message_and_dashes(tmp_path):
    message = "ValueError: <shape> & (3,) != (4,)"
    rows = [failed_row("HOG + forest", message), failed_row("PCA & <SVM>", "RuntimeError: out of memory"),
            row("end-to-end CNN", 0.9, kind="end-to-end")]
    page = write(tmp_path, comparison(rows))
    assert "failed: ValueError: &lt;shape&gt; &amp; (3,) != (4,)" in page and "<shape>" not in page
    assert "PCA &amp; &lt;SVM&gt;" in page and "<SVM>" not in page
    failed = re.search(r"<tr><td>HOG \+ forest</td>.*?</tr>", page).group(0)
    assert failed.count("<td>–</td>") == 4 and 'class="failed"' in failed
    assert images_in(page) == 2


def test_every_row_failed_still_writes_a_page(tmp_path):
    page = write(tmp_path, comparison([failed_row("a", "ValueError: x"), failed_row("b", "KeyError: 'y'")]))
    assert "No pipeline produced a value." in page and images_in(page) == 0
    assert "failed: KeyError: &#x27;y&#x27;" in page


def test_lower_is_better_metric_on_its_own_scale(tmp_path):
    rows = [row("ridge on features", 4.4, 0.3, [4.1, 4.7]), row("end-to-end MLP", 3.7, 0.2, [3.5, 3.9], kind="end-to-end")]
    comp = comparison(rows, metric="mae", higher_is_better=False, seeds=[0, 1])
    page = write(tmp_path, comp)
    assert "lower is better" in page and "higher is better" not in page
    assert '<td class="best">3.7 ± 0.2</td>' in page and "4.4 ± 0.3" in page
    assert "<h2>Test mae</h2>" in page and "mae (mean ± std)" in page


@pytest.mark.parametrize("values", [[0.95, 0.97, 0.99], [3.7, 4.1], [-2.0, -1.5], [-1.0, 2.0], [0.5, 0.5], [0.0, 0.0]])
def test_bar_limits_hold_the_values_and_their_labels(values):
    base, left, right = _bar_limits(min(values), max(values))
    assert left <= min(values) and right > max(values)  # room past the largest for its label
    assert left <= base <= right
    if min(values) >= 0.9:  # accuracies near 1: zoomed in, not drawn from 0
        assert base > 0.5


def test_equal_values_and_mixed_signs_do_not_crash(tmp_path):
    for values in ([0.5, 0.5], [0.0, 0.0], [-1.0, 2.0], [-3.0, -2.5]):
        rows = [row("a", values[0]), row("b", values[1], kind="end-to-end")]
        assert images_in(write(tmp_path, comparison(rows))) == 2


def test_learning_curves_skip_failed_points_and_show_the_crossover(tmp_path):
    rows = two_seed_rows()
    lc = curves([r["pipeline"] for r in rows], budgets=(0.5, 1.0), items=(62, 125))  # a 2x span: linear x
    lc["PCA + SVM"][0] = {"budget": 0.5, "items": 62, "value": None, "std": 0.0, "failed": "ValueError: too few"}
    comp = comparison(rows, learning_curves=lc, crossover={"budget": None, "items": None,
                                                           "text": "No crossover: the <CNN> leads at every budget."})
    page = write(tmp_path, comp)
    assert "<h2>Learning curves</h2>" in page and images_in(page) == 3
    assert "No crossover: the &lt;CNN&gt; leads at every budget." in page


def test_learning_curves_with_no_value_left(tmp_path):
    lc = {"a": [{"budget": 1.0, "items": 10, "value": None, "std": 0.0, "failed": "ValueError: x"}]}
    page = write(tmp_path, comparison([row("a", 0.5)], learning_curves=lc, crossover={"text": "none"}))
    assert "No budget produced a value." in page and images_in(page) == 2


def test_gallery_from_a_float_gray_tensor(tmp_path):
    rows = two_seed_rows()
    comp = comparison(rows, gallery=gallery([r["pipeline"] for r in rows], count=3) + [{"index": 99, "target": 1,
                                                                                          "predictions": {}}])
    page = write(tmp_path, comp, torch.rand(10, 1, 8, 8))
    assert "<h2>Gallery</h2>" in page and images_in(page) == 3


def test_no_gallery_without_images_or_entries(tmp_path):
    rows = two_seed_rows()
    assert "Gallery" not in write(tmp_path, comparison(rows, gallery=gallery(["PCA + SVM"])))
    assert "Gallery" not in write(tmp_path, comparison(rows, gallery=[]), np.zeros((4, 1, 8, 8), np.uint8))
    assert "Gallery" not in write(tmp_path, comparison(rows), np.zeros((4, 3, 8, 8), np.float32))


def test_rows_without_the_new_measures_still_render(tmp_path):
    """comparison.json written before seeds, metrics and latency: the table dashes them, no latency."""
    comp = {"recipe": "digits", "metric": "accuracy", "higher_is_better": True, "seed": 0,
            "rows": [{"pipeline": "a", "kind": "staged", "value": 0.9, "train_seconds": 1.0, "parameters": 10},
                     {"pipeline": "b", "kind": "end-to-end", "value": 0.95, "train_seconds": 2.0, "parameters": 20}]}
    page = write(tmp_path, comp)
    assert images_in(page) == 1 and "Latency" not in page and "seed 0" in page
