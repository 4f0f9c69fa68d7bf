"""report.html of a comparison (comparison.json, the decision matrix): the metric per pipeline
with error bars over seeds, the table of every measure, learning curves and the crossover,
latency, the regimes' probes, and a gallery of test inputs where the pipelines disagree."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from endtoend.report.page import Cell, _figure_html, _page, _table

# --- the comparison page (comparison.json, the "decision matrix") ---------------------------------

_E2E_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
_STAGED_GREYS = ["#8c8c8c", "#5a5a5a", "#b4b4b4", "#3c3c3c", "#a0a0a0", "#707070"]
_STAGED_MARKERS = ["s", "^", "D", "v", "P", "X"]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> str:
    """Four significant digits: fits an accuracy of 0.9512 and an MAE of 3.7 alike."""
    if not _finite(v):
        return "–"
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _plottable(row: dict[str, Any]) -> bool:
    return not row.get("failed") and _finite(row.get("value"))


def _spread(row: dict[str, Any]) -> float:
    """The std over seeds, or 0 when there was one seed (no error bar to draw)."""
    values = row.get("values")
    if isinstance(values, list) and len(values) < 2:
        return 0.0
    std = row.get("std")
    return float(std) if _finite(std) and std > 0 else 0.0


def _direction(comparison: dict[str, Any]) -> str:
    return "higher is better" if comparison.get("higher_is_better", True) else "lower is better"


def _colours(comparison: dict[str, Any]) -> dict[str, str]:
    """One colour per pipeline, the same in every chart: end-to-end coloured, staged in greys."""
    names = [r["pipeline"] for r in comparison["rows"]]
    names += [n for n in comparison.get("learning_curves") or {} if n not in names]
    kinds = _kinds(comparison)
    colours, e2e, staged = {}, 0, 0
    for name in names:
        if kinds.get(name) == "end-to-end":
            colours[name], e2e = _E2E_COLOURS[e2e % len(_E2E_COLOURS)], e2e + 1
        else:
            colours[name], staged = _STAGED_GREYS[staged % len(_STAGED_GREYS)], staged + 1
    return colours


def _kinds(comparison: dict[str, Any]) -> dict[str, str]:
    kinds = {r["pipeline"]: r.get("kind", "staged") for r in comparison["rows"]}
    for name in comparison.get("learning_curves") or {}:  # a curve without a row: guess from its name
        kinds.setdefault(name, "end-to-end" if name.startswith("end-to-end") else "staged")
    return kinds


def _seeds(comparison: dict[str, Any]) -> list[Any]:
    seeds = comparison.get("seeds")
    if seeds is None and "seed" in comparison:  # the older single-seed comparison.json
        seeds = [comparison["seed"]]
    return list(seeds or [])


def _intro_html(comparison: dict[str, Any]) -> str:
    rows = comparison["rows"]
    staged = sum(r.get("kind") != "end-to-end" for r in rows)
    e2e = len(rows) - staged
    seeds = _seeds(comparison)
    description = comparison.get("description")
    text = (f"{staged} staged pipeline{'s' * (staged != 1)} and {e2e} end-to-end "
            f"model{'s' * (e2e != 1)} on the same test split of <b>{html.escape(str(comparison['recipe']))}</b>")
    if description:
        text += f" ({html.escape(str(description))})"
    if len(seeds) > 1:
        text += f", each trained with seeds {html.escape(', '.join(map(str, seeds)))}; values are the mean ± std over seeds"
    elif seeds:
        text += f", seed {html.escape(str(seeds[0]))}"
    budgets = comparison.get("budgets")
    if comparison.get("learning_curves") and budgets:
        shown = ", ".join(f"{b * 100:.3g}%" for b in budgets if _finite(b))
        text += f"; learning curves at {html.escape(shown)} of the training set"
    if comparison.get("small"):
        text += "; small (quick) data settings"
    text += (f". The measure is test {html.escape(str(comparison['metric']))}: "
             f"<b>{_direction(comparison)}</b>.")
    return f"<p>{text}</p>"


def _bar_limits(low: float, high: float) -> tuple[float, float, float]:
    """(base the bars grow from, left x limit, right x limit) for bars spanning [low, high].

    Bars start at 0 unless the values huddle far from it (accuracies of 0.95-0.99), where
    starting at 0 would hide the differences; room is left on the far side for the labels."""
    span = high - low
    if span <= 0:  # all values equal: any nonzero scale will do
        span = abs(high) * 0.1 or 1.0
    if low >= 0:
        base = low - span if low > 3 * span else 0.0
        return base, base, high + 0.3 * max(high - base, span)
    if high <= 0:  # all negative: the bars grow leftward
        base = high + span if high < -3 * span else 0.0
        return base, low - 0.3 * max(base - low, span), base
    return 0.0, low - 0.3 * (high - low), high + 0.3 * (high - low)


def _bar_chart_html(comparison: dict[str, Any], colours: dict[str, str]) -> str:
    rows = [r for r in comparison["rows"] if _plottable(r)]
    if not rows:
        return "<p>No pipeline produced a value.</p>"
    values = [float(r["value"]) for r in rows]
    errors = [_spread(r) for r in rows]
    base, left, right = _bar_limits(min(v - e for v, e in zip(values, errors)),
                                    max(v + e for v, e in zip(values, errors)))
    fig = Figure(figsize=(7.5, 0.45 * len(rows) + 1.3), layout="constrained")
    ax = fig.subplots()
    ys = range(len(rows))
    ax.barh(ys, [v - base for v in values], left=base, color=[colours[r["pipeline"]] for r in rows],
            xerr=errors if any(errors) else None, capsize=4, ecolor="#333")
    for y, v, e in zip(ys, values, errors):
        end = v + e if v >= base else v - e  # the label sits past the bar and its error bar
        label = f" {_num(v)} ± {_num(e)} " if e else f" {_num(v)} "
        ax.text(end, y, label, va="center", ha="left" if v >= base else "right", fontsize=9)
    ax.set_yticks(list(ys), [r["pipeline"] for r in rows])
    ax.set_xlim(left, right)
    if left < 0 < right:  # mixed signs: the bars grow both ways from zero
        ax.axvline(0, color="#333", linewidth=0.8)
    ax.set_xlabel(f"test {comparison['metric']} ({_direction(comparison)})")
    ax.invert_yaxis()
    return _figure_html(fig)


def _best(comparison: dict[str, Any]) -> float | None:
    """The best value, or None when there is nothing to single out (one row, or all equal)."""
    values = [float(r["value"]) for r in comparison["rows"] if _plottable(r)]
    if len(set(values)) < 2:
        return None
    return max(values) if comparison.get("higher_is_better", True) else min(values)


def _results_table_html(comparison: dict[str, Any]) -> str:
    rows, metric = comparison["rows"], str(comparison["metric"])
    per_seed = len(_seeds(comparison)) > 1 or any(len(r.get("values") or []) > 1 for r in rows)
    # every other metric the recipe's evaluate returned; the primary one already has its column
    extra = list(dict.fromkeys(k for r in rows for k in (r.get("metrics") or {})
                               if k not in (metric, f"test_{metric}")))
    header = ["pipeline", "kind", f"{metric} (mean ± std)" if per_seed else metric]
    if per_seed:
        header.append(f"{metric} per seed ({', '.join(map(str, _seeds(comparison)))})")
    header += [*extra, "train s", "ms/item", "items/s", "parameters"]
    best = _best(comparison)
    body = []
    for r in rows:
        cells: list[str | Cell] = [str(r["pipeline"]), str(r.get("kind", ""))]
        if r.get("failed"):
            # the measures of a failed pipeline mean nothing: one cell says why, dashes for the rest
            cells.append(Cell(f"failed: {r['failed']}", 1 + per_seed + len(extra), "failed"))
            cells += ["–"] * 4
        else:
            value, std = r.get("value"), _spread(r)
            text = f"{_num(value)} ± {_num(std)}" if std else _num(value)
            cells.append(Cell(text, css="best" if best is not None and value == best else ""))
            if per_seed:
                cells.append(", ".join(_num(v) for v in r.get("values") or []) or "–")
            cells += [_num((r.get("metrics") or {}).get(k)) for k in extra]
            seconds, ms, per_second = r.get("train_seconds"), r.get("predict_ms_per_item"), r.get("items_per_second")
            parameters = r.get("parameters")
            cells += [f"{seconds:.1f}" if _finite(seconds) else "–", _num(ms),
                      f"{per_second:,.0f}" if _finite(per_second) and per_second >= 100 else _num(per_second),
                      f"{parameters:,}" if isinstance(parameters, int) else "–"]
        body.append(cells)
    return _table(header, body)


def _learning_curves_html(comparison: dict[str, Any], colours: dict[str, str]) -> str:
    curves = comparison.get("learning_curves") or {}
    crossover = comparison.get("crossover") or {}
    if not curves and not crossover:
        return ""
    parts = ["<h2>Learning curves</h2>"]
    figure = _learning_curves_figure(comparison, curves, colours)
    parts.append(figure or "<p>No budget produced a value.</p>")
    if crossover.get("text"):
        parts.append(f'<p class="crossover">{html.escape(str(crossover["text"]))}</p>')
    return "".join(parts)


def _learning_curves_figure(comparison: dict[str, Any], curves: dict[str, list[dict[str, Any]]],
                            colours: dict[str, str]) -> str:
    import numpy as np
    from matplotlib.ticker import NullLocator

    kinds = _kinds(comparison)
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    budget_at: dict[int, Any] = {}  # training items -> budget, for the tick labels
    staged = 0
    for name, points in curves.items():
        good = sorted((p for p in points if not p.get("failed") and _finite(p.get("value"))
                       and _finite(p.get("items")) and p["items"] > 0), key=lambda p: p["items"])
        if not good:  # a failed point is skipped; a pipeline with none left draws nothing
            continue
        xs = np.array([p["items"] for p in good], dtype=float)
        ys = np.array([p["value"] for p in good], dtype=float)
        stds = np.array([p.get("std") if _finite(p.get("std")) else 0.0 for p in good], dtype=float)
        end_to_end = kinds.get(name) == "end-to-end"
        marker = "o" if end_to_end else _STAGED_MARKERS[staged % len(_STAGED_MARKERS)]
        staged += not end_to_end
        ax.plot(xs, ys, linestyle="-" if end_to_end else "--", marker=marker, markersize=4,
                linewidth=2 if end_to_end else 1.4, color=colours.get(name, "#888"), label=name)
        if (stds > 0).any():
            ax.fill_between(xs, ys - stds, ys + stds, color=colours.get(name, "#888"), alpha=0.18, linewidth=0)
        for p in good:
            budget_at.setdefault(int(p["items"]), p.get("budget"))
    if not budget_at:
        return ""
    items = sorted(budget_at)
    if items[-1] / items[0] > 4:  # budgets spanning a wide range: equal steps per doubling
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # only the budgets' own ticks
    ax.set_xticks(items, [f"{n:,}\n{budget_at[n] * 100:.3g}%" if _finite(budget_at[n]) else f"{n:,}"
                          for n in items])
    crossover_items = (comparison.get("crossover") or {}).get("items")
    if _finite(crossover_items) and crossover_items > 0:
        ax.axvline(crossover_items, color="#e0a800", linestyle=":", linewidth=1.5, label="crossover")
    ax.set_xlabel("training items (and share of the full training set)")
    ax.set_ylabel(f"test {comparison['metric']} ({_direction(comparison)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_html(fig)


def _latency_html(comparison: dict[str, Any], colours: dict[str, str]) -> str:
    rows = [r for r in comparison["rows"] if not r.get("failed")
            and _finite(r.get("predict_ms_per_item")) and r["predict_ms_per_item"] > 0]
    if not rows:
        return ""
    ms = [float(r["predict_ms_per_item"]) for r in rows]
    fig = Figure(figsize=(7.5, 0.4 * len(rows) + 1.2), layout="constrained")
    ax = fig.subplots()
    ys = range(len(rows))
    ax.barh(ys, ms, color=[colours[r["pipeline"]] for r in rows])
    for y, value, r in zip(ys, ms, rows):
        per_second = r.get("items_per_second")
        extra = f" ({per_second:,.0f} items/s)" if _finite(per_second) else ""
        ax.text(value, y, f" {_num(value)} ms{extra}", va="center", fontsize=9)
    ax.set_yticks(list(ys), [r["pipeline"] for r in rows])
    if max(ms) / min(ms) > 10:  # a fast linear model next to a CNN: log, or the small bars vanish
        ax.set_xscale("log")
        ax.set_xlim(min(ms) / 2, max(ms) * 12)
    else:
        ax.set_xlim(0, max(ms) * 1.6)
    ax.set_xlabel("prediction latency, ms per item")
    ax.invert_yaxis()
    return ("<h2>Latency</h2><p>ms per item: the median over repeats of predicting one test item at a "
            "time; items/s: predicting the test inputs batched. Both on the machine that ran the "
            "comparison.</p>" + _figure_html(fig))


def _regimes_html(comparison: dict[str, Any]) -> str:
    regime_rows = [r for r in comparison["rows"] if "probes" in r]
    if not regime_rows:
        return ""
    stages = list(dict.fromkeys(s for r in regime_rows for s in r["probes"] or {}))

    def value(r: dict[str, Any]) -> Any:
        return f"failed: {r['failed']}" if r.get("failed") else r["value"] if _finite(r.get("value")) else "–"
    return ("<h2>Regimes and linear probes</h2><p>Test accuracy of a logistic-regression "
            "probe on each stage's output: how each regime shaped the internal "
            "representation.</p>" + _table(
                ["regime", str(comparison["metric"]), *(f"probe: {s}" for s in stages)],
                [[r["pipeline"], value(r), *((r["probes"] or {}).get(s, "") for s in stages)]
                 for r in regime_rows]))


def _as_images(images: Any) -> Any:
    """(N, H, W, C) float in [0, 1] from a tensor or array (N, C, H, W), uint8 or float."""
    import numpy as np

    if hasattr(images, "detach"):  # a torch tensor, without importing torch here
        images = images.detach().cpu().numpy()
    array = np.asarray(images)
    if array.ndim == 3:  # (N, H, W): one channel without its axis
        array = array[:, None]
    if array.ndim != 4:
        return None
    array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    array = array.transpose(0, 2, 3, 1)
    if array.shape[-1] != 3:  # gray (or an unexpected channel count: its first channel)
        array = array[..., :1]
    return np.clip(array, 0.0, 1.0)


def _letters(names: list[str]) -> dict[str, str]:
    return {n: chr(ord("A") + i) if i < 26 else f"P{i}" for i, n in enumerate(names)}


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)  # 3 and "3" from different writers are one label


def _gallery_html(comparison: dict[str, Any], images: Any) -> str:
    gallery = comparison.get("gallery") or []
    if not gallery or images is None:
        return ""
    pictures = _as_images(images)
    if pictures is None:
        return ""
    items = [g for g in gallery if isinstance(g.get("index"), int) and 0 <= g["index"] < len(pictures)][:12]
    if not items:
        return ""
    order = [r["pipeline"] for r in comparison["rows"]]
    names = [n for n in order if any(n in g.get("predictions", {}) for g in items)]
    names += list(dict.fromkeys(n for g in items for n in g.get("predictions", {}) if n not in names))
    letters = _letters(names)
    columns = min(6, len(items))
    lines = len(names) + 1
    grid_rows = math.ceil(len(items) / columns)
    fig = Figure(figsize=(1.75 * columns, (1.6 + 0.17 * lines) * grid_rows), layout="constrained")
    axes = fig.subplots(grid_rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, g in zip(axes.flat, items):
        picture = pictures[g["index"]]
        if picture.shape[-1] == 1:
            ax.imshow(picture[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(picture, interpolation="nearest")
        ax.set_title(f"target {g.get('target')}", fontsize=8)
        # one line per pipeline under the picture, red where it is wrong
        for k, name in enumerate(names):
            if name not in g.get("predictions", {}):
                continue
            prediction = g["predictions"][name]
            wrong = not _same(prediction, g.get("target"))
            ax.annotate(f"{letters[name]}: {prediction}", xy=(0.5, 0), xycoords="axes fraction",
                        xytext=(0, -3 - 10 * k), textcoords="offset points", ha="center", va="top",
                        fontsize=7.5, color="#c00000" if wrong else "#222",
                        fontweight="bold" if wrong else "normal")
    legend = "; ".join(f"{letters[n]}: {html.escape(n)}" for n in names)
    return ("<h2>Gallery</h2>" + _figure_html(fig) +
            f"<p>test inputs where the pipelines disagree. Under each input, each pipeline's "
            f"prediction, <span style='color:#c00000'><b>red</b></span> where wrong. {legend}.</p>")


def _footer_html(comparison: dict[str, Any]) -> str:
    facts = [f"{k} {comparison[k]}" for k in ("torch", "end_to_end_run") if comparison.get(k)]
    return f"<p class='note'>{html.escape('; '.join(facts))}</p>" if facts else ""


def _animations_html(comparison: dict[str, Any]) -> str:
    """The recipe's animations (GIFs written beside report.html), one per pipeline."""
    animations = comparison.get("animations") or {}
    if not animations:
        return ""
    items = "".join(f"<figure style='display:inline-block;margin:0 1em 1em 0'><img src='{html.escape(name)}'>"
                    f"<figcaption>{html.escape(title)}</figcaption></figure>" for title, name in animations.items())
    return "<h2>Animations</h2><p>One test prediction of each pipeline, animated by the recipe.</p>" + items


def write_comparison_report(folder: Path, comparison: dict[str, Any], images: Any = None,
                            examples: Figure | None = None) -> Path:
    """folder/report.html for a comparison.json: staged pipelines vs the end-to-end model.

    `images`, the test split's inputs (N, C, H, W) as a tensor or array, uint8 or float in
    [0, 1], is drawn only for the gallery (`comparison["gallery"]` holds indices into it).
    `examples`: the recipe's own picture of test predictions (its `report_figure`)."""
    folder = Path(folder)
    colours = _colours(comparison)
    parts = [_intro_html(comparison),
             f"<h2>Test {html.escape(str(comparison['metric']))}</h2>",
             _bar_chart_html(comparison, colours), _results_table_html(comparison),
             _learning_curves_html(comparison, colours), _latency_html(comparison, colours),
             _regimes_html(comparison), _gallery_html(comparison, images),
             ("<h2>Examples</h2><p>Test inputs and each pipeline's predictions, drawn by the recipe.</p>"
              + _figure_html(examples)) if examples is not None else "",
             _animations_html(comparison), _footer_html(comparison)]
    path = folder / "report.html"
    path.write_text(_page(f"endtoend compare: {comparison['recipe']}", [p for p in parts if p]))
    return path
