"""report.html: curves and tables drawn with matplotlib, images inlined so it opens offline.

Figures are `matplotlib.figure.Figure` objects, never pyplot: no backend is chosen at import,
the user's pyplot state (a notebook's backend, open windows) is left alone, and a figure is
freed when it goes out of scope (`savefig` to PNG renders with Agg by itself).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

_STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}"""


def _figure_html(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_run_report(folder: Path) -> Path:
    """Loss and metric curves plus the final metrics of the run in `folder`."""
    folder = Path(folder)
    records = read_metrics(folder)
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r["split"] in ("train", "val") and not r["name"].startswith("final_") and r["name"] != "skipped_step":
            series[(r["split"], r["name"])].append((r["step"], r["value"]))
    names = sorted({name for _, name in series})
    parts = []
    if names:
        fig = Figure(figsize=(4.2 * len(names), 3.2), layout="constrained")  # no tick labels over the next panel
        axes = fig.subplots(1, len(names), squeeze=False)
        for ax, name in zip(axes[0], names):
            for (split, n), points in sorted(series.items()):
                if n == name:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker="o" if split != "train" else None, markersize=3, label=split)
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.legend()
        parts.append("<h2>Curves</h2>" + _figure_html(fig))
    heat_map = _gradient_heat_map(records)
    if heat_map:
        parts.append("<h2>Per-layer gradient norm</h2><p>log10 of each parameter's gradient L2 norm "
                     "over training: a row fading to the left-hand colours is vanishing, a row "
                     "brightening is exploding.</p>" + heat_map)
    final = summary.get("metrics", {})
    parts.append("<h2>Final metrics</h2>" + _table(["metric", "value"], [[k, v] for k, v in final.items()]))
    facts = [[k, summary[k]] for k in ("recipe", "seed", "steps", "seconds", "device", "weights_sha256") if k in summary]
    parts.append("<h2>Run</h2>" + _table(["field", "value"], facts))
    path = folder / "report.html"
    path.write_text(_page(f"endtoend run: {summary.get('recipe') or folder.name}", parts))
    return path


def _gradient_heat_map(records: list[dict[str, Any]]) -> str:
    """Heat map (layers x logged steps) of log10 gradient norms, or "" when none were logged."""
    import numpy as np

    norms = [r for r in records if r["split"] == "grad_norm"]
    if not norms:
        return ""
    names = list(dict.fromkeys(r["name"] for r in norms))  # model order
    steps = sorted({r["step"] for r in norms})
    grid = np.full((len(names), len(steps)), np.nan)
    row, column = {n: i for i, n in enumerate(names)}, {s: j for j, s in enumerate(steps)}
    for r in norms:
        grid[row[r["name"]], column[r["step"]]] = np.log10(max(r["value"], 1e-12))
    fig = Figure(figsize=(9, 0.22 * len(names) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).astype(int)
    ax.set_xticks(ticks, [steps[t] for t in ticks])
    ax.set_xlabel("step")
    fig.colorbar(image, ax=ax, label="log10 gradient norm")
    return _figure_html(fig)


def write_comparison_report(folder: Path, comparison: dict[str, Any]) -> Path:
    """Bar chart and table of staged pipelines vs the end-to-end model."""
    folder = Path(folder)
    rows = comparison["rows"]
    fig = Figure(figsize=(7, 0.6 * len(rows) + 1.2))
    ax = fig.subplots()
    colors = ["#4c72b0" if r["kind"] == "end-to-end" else "#aaaaaa" for r in rows]
    ax.barh([r["pipeline"] for r in rows], [r["value"] for r in rows], color=colors)
    low, high = min(r["value"] for r in rows), max(r["value"] for r in rows)
    left = max(0.0, low - 0.05)
    ax.set_xlim(left, high + 0.15 * (high - left))  # room for the value labels
    for i, r in enumerate(rows):
        ax.text(r["value"], i, f" {r['value']:.4f}", va="center")
    ax.set_xlabel(f"test {comparison['metric']}")
    ax.invert_yaxis()
    table = _table(["pipeline", "kind", comparison["metric"], "train seconds", "parameters"],
                   [[r["pipeline"], r["kind"], r["value"], r["train_seconds"], r["parameters"]] for r in rows])
    parts = [f"<p>Staged pipelines and the end-to-end model on the same split of "
             f"<b>{html.escape(comparison['recipe'])}</b>, seed {comparison.get('seed')}.</p>",
             _figure_html(fig), table]
    regime_rows = [r for r in rows if "probes" in r]
    if regime_rows:
        stages = list(dict.fromkeys(s for r in regime_rows for s in r["probes"]))
        parts.append("<h2>Regimes and linear probes</h2><p>Test accuracy of a logistic-regression "
                     "probe on each stage's output: how each regime shaped the internal "
                     "representation.</p>" + _table(
                         ["regime", comparison["metric"], *(f"probe: {s}" for s in stages)],
                         [[r["pipeline"], r["value"], *(r["probes"].get(s, "") for s in stages)] for r in regime_rows]))
    path = folder / "report.html"
    path.write_text(_page(f"endtoend compare: {comparison['recipe']}", parts))
    return path
