"""Shared pieces of report.html pages: the style sheet, inlined figures, tables, the page.

Figures are `matplotlib.figure.Figure` objects, never pyplot: no backend is chosen at import,
the user's pyplot state (a notebook's backend, open windows) is left alone, and a figure is
freed when it goes out of scope (`savefig` to PNG renders with Agg by itself). Images are
inlined as base64 PNG so that a report opens offline.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, NamedTuple

from matplotlib.figure import Figure

_STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}
td.failed{color:#b00020;text-align:left}td.best{font-weight:bold}.note{color:#666;font-size:90%}
.crossover{background:#fff6d5;border-left:4px solid #e0a800;padding:.6em 1em}"""


def _figure_html(fig: Figure) -> str:
    buffer = io.BytesIO()
    # A figure with a layout engine (constrained) already fits its content to the canvas: a
    # tight bounding box would only cost a second full draw (a third of a run report's time).
    fig.savefig(buffer, format="png", dpi=110, bbox_inches=None if fig.get_layout_engine() else "tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


class Cell(NamedTuple):
    """A table cell with attributes (a span over columns, a CSS class); anything else in a row
    is an ordinary cell."""
    text: str
    colspan: int = 1
    css: str = ""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table: floats with four decimals, everything escaped, `Cell`s with their span
    and class."""
    def cell(v: Any) -> str:
        if isinstance(v, Cell):
            span = f' colspan="{v.colspan}"' if v.colspan > 1 else ""
            css = f' class="{v.css}"' if v.css else ""
            return f"<td{span}{css}>{html.escape(v.text)}</td>"
        return f"<td>{f'{v:.4f}' if isinstance(v, float) else html.escape(str(v))}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
