"""report.html of one training run: loss and metric curves, the per-layer gradient heat map,
the final metrics."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from endtoend.report.page import _figure_html, _page, _table

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
