"""The multitask recipe's report picture: per-task scores, learned task weights, test scenes.

Top: one panel per task metric (macro F1, mIoU, rounded-count accuracy, count MAE), a bar per
row, scored by the recipe's `evaluate` on the test predictions. Middle, when the run directories
are given: each learned weighting's multiplier on every term over training, as `fit` logged it
(`weight/<term>` in metrics.jsonl; rows whose weights never move, the fixed ones, are left out).
Bottom: a few busy test scenes, the truth and each row's mask, titled with its count and classes.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from endtoend.data.shapes import CLASSES as SHAPES
from endtoend.recipes.multitask import MAX_OBJECTS, evaluate, unpack
from endtoend.recipes.segment import CLASSES as MASK_CLASSES
from endtoend.recipes.segment import COLOURS

BARS = (("macro_f1", "classes: macro F1"), ("miou", "mask: mean IoU"), ("count_accuracy", "count: accuracy"),
        ("count_mae", "count: MAE (lower is better)"))
SCENES = 3


def weight_history(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{term: (steps, multipliers)} from a run directory's metrics.jsonl (fit logs an Objective's
    `weight/<term>` every log_every steps); {} when there is none."""
    path = Path(run_dir) / "metrics.jsonl"
    history: dict[str, tuple[list[int], list[float]]] = {}
    if not path.is_file():
        return history
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and str(record.get("name", "")).startswith("weight/"):
            steps, values = history.setdefault(record["name"][len("weight/"):], ([], []))
            steps.append(record["step"])
            values.append(record["value"])
    return history


def _learned(runs: dict | None) -> dict[str, dict]:
    histories = {row: weight_history(folder) for row, folder in (runs or {}).items()}
    return {row: h for row, h in histories.items() if any(len(set(values)) > 1 for _, values in h.values())}


def figure(inputs, targets, predictions: dict, runs: dict | None = None) -> Figure:
    """report_figure's picture (the module docstring): `predictions` {row: packed test predictions},
    `runs` {row: run directory} or None."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    images = np.asarray(inputs.cpu() if hasattr(inputs, "cpu") else inputs)
    truth = np.asarray(targets.cpu() if hasattr(targets, "cpu") else targets)
    rows = {name: np.asarray(value) for name, value in predictions.items()}
    scores = {name: evaluate(value, truth) for name, value in rows.items()}
    learned = _learned(runs)
    busy = np.flatnonzero(unpack(truth)["count"] >= 3)[:SCENES]
    columns = [("input", None), ("truth", truth)] + list(rows.items())

    heights = [2.9] + [2.6] * bool(learned) + [2.0 * len(busy) + 0.6]   # inches: bars, weights, scenes
    fig = Figure(figsize=(max(11.0, 1.9 * len(columns)), sum(heights)), layout="constrained")
    parts = fig.subfigures(len(heights), 1, height_ratios=heights)
    colours = [f"C{i}" for i in range(len(rows))]
    for ax, (key, title) in zip(parts[0].subplots(1, len(BARS)), BARS):
        values = [scores[name][key] for name in rows]
        bars = ax.bar(range(len(rows)), values, color=colours)
        ax.bar_label(bars, fmt="%.3f", fontsize=6)
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(rows)), [textwrap.fill(name, 16) for name in rows], fontsize=5.5, rotation=30)
        ax.tick_params(axis="y", labelsize=6)
        if key != "count_mae":
            ax.set_ylim(0, 1.08)
    parts[0].suptitle("per-task test scores (first seed; the comparison table holds the means over seeds)", fontsize=9)
    if learned:
        for ax, (row, history) in zip(np.atleast_1d(parts[1].subplots(1, len(learned))), learned.items()):
            for term, (steps, values) in history.items():
                ax.plot(steps, values, label=term, linewidth=1.2)
            ax.set_title(row, fontsize=8)
            ax.set_xlabel("training step", fontsize=7)
            ax.set_ylabel("weight on the term", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6)
        parts[1].suptitle("learned task weights over training (first seed)", fontsize=9)
    cmap = ListedColormap(COLOURS)
    if len(busy):
        axes = parts[-1].subplots(len(busy), len(columns), squeeze=False)
        for r, index in enumerate(busy):
            for c, (title, packed) in enumerate(columns):
                ax = axes[r, c]
                if packed is None:
                    ax.imshow(np.moveaxis(images[index], 0, -1).astype(np.uint8))
                else:
                    fields = unpack(packed[index])
                    ax.imshow(fields["mask"][0], cmap=cmap, vmin=-0.5, vmax=len(MASK_CLASSES) - 0.5,
                              interpolation="nearest")
                    count = int(np.clip(np.rint(fields["count"][0]), 0, MAX_OBJECTS))
                    present = "".join(name[0] for name, p in zip(SHAPES, fields["classes"][0]) if p >= 0.5)
                    ax.set_xlabel(f"count {count} | {present or '-'}", fontsize=6)
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(textwrap.fill(title, 22), fontsize=6)
        parts[-1].suptitle("test scenes: each row's mask, count and classes present (c circle, s square, "
                           "t triangle)", fontsize=8)
        parts[-1].legend(handles=[Patch(color=COLOURS[i], label=name) for i, name in enumerate(MASK_CLASSES)],
                         loc="outside lower center", ncol=len(MASK_CLASSES), fontsize=7)
    return fig
