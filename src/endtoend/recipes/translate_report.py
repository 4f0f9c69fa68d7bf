"""The translate recipe's report picture: where the networks look, and what each pipeline gets wrong.

Top: the cross-attention of each end-to-end model (last decoder layer, averaged over heads) on
three test phrases: German subwords (rows) against English subwords (columns), which shows
the reordering the network learned ("vier und dreißig" looking at "thirty four" backwards).
Bottom: test phrases some pipeline gets wrong, each pipeline's output beside the truth,
wrong ones in red.
"""

from __future__ import annotations

from matplotlib.figure import Figure

SHOWN = 3      # phrases with attention maps
ERRORS = 8     # rows of the error table


def _pick(sources: list[str]) -> list[int]:
    """Three test phrases of growing size that need reordering (a 'twenty one'-like pair)."""
    wanted = [i for i, s in enumerate(sources) if any(t in s for t in ("ty one", "ty two", "ty three", "ty four",
                                                                         "ty five", "ty six", "ty seven"))]
    wanted.sort(key=lambda i: len(sources[i]))
    if len(wanted) < SHOWN:
        return list(range(min(SHOWN, len(sources))))
    return [wanted[len(wanted) // 6], wanted[len(wanted) // 2], wanted[-len(wanted) // 6]]


def figure(sources: list[str], references: list[str], predictions: dict) -> Figure:
    networks = [name for name, p in predictions.items() if len(p) and getattr(p[0], "attention", None) is not None]
    shown = _pick(sources)
    fig = Figure(figsize=(4.2 * SHOWN, 3.2 * len(networks) + 0.35 * ERRORS + 1.2), layout="constrained")
    grid = fig.add_gridspec(len(networks) + 1, SHOWN, height_ratios=[3.2] * len(networks) + [0.35 * ERRORS + 0.8])
    for row, name in enumerate(networks):
        for column, index in enumerate(shown):
            item = predictions[name][index]
            axes = fig.add_subplot(grid[row, column])
            axes.imshow(item.attention, cmap="viridis", vmin=0, aspect="auto")
            axes.set_xticks(range(len(item.source_tokens)), item.source_tokens, rotation=70, fontsize=7)
            axes.set_yticks(range(len(item.target_tokens)), item.target_tokens, fontsize=7)
            correct = "right" if str(item) == references[index] else f"wrong, truth {references[index]}"
            axes.set_title(f"{name}\n{str(item)} ({correct})", fontsize=7)
    table = fig.add_subplot(grid[len(networks), :])
    table.axis("off")
    names = list(predictions)
    disagree = [i for i in range(len(references)) if len({str(predictions[n][i]) for n in names} | {references[i]}) > 1]
    rows = [[sources[i], references[i]] + [str(predictions[n][i]) for n in names] for i in disagree[:ERRORS]]
    if not rows:
        table.set_title("every pipeline translates every test phrase right", fontsize=9)
        return fig
    cells = table.table(cellText=rows, colLabels=["English", "truth"] + names, loc="upper center", cellLoc="left")
    cells.auto_set_font_size(False)
    cells.set_fontsize(7)
    for r, i in enumerate(disagree[:ERRORS], start=1):
        for c, name in enumerate(names, start=2):
            if str(predictions[name][i]) != references[i]:
                cells[r, c].get_text().set_color("#c0392b")
    table.set_title(f"test phrases some pipeline gets wrong ({len(disagree)} of {len(references)}; wrong in red)",
                    fontsize=9)
    return fig
