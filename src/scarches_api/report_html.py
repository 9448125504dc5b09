"""The mapping-quality report as one self-contained HTML page: inline CSS, plots as base64 PNG, no external resources.

Plots are drawn with matplotlib's object API on the Agg canvas (never pyplot), so rendering is thread-safe inside the
API server and needs no display. Scatter plots are rasterised with small markers: 30k cells render in about a second.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ColorBy = Literal["type", "cell_type", "uncertainty"]

_GREY = "#d0d0d0"
_QUERY = "#d62728"
_REFERENCE = "#1f77b4"
_DPI = 100
_MAX_LEGEND = 30  # more labels than this make an unreadable legend; the rest are grouped as 'other'
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots figure{margin:0;flex:1 1 360px}
.plots img{width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;font-size:.9em;margin:.3em 0}td,th{border:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f5f5f5;font-weight:600}
""".strip()


def _palette(n: int) -> list:
    from matplotlib import colormaps

    base = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors) + list(colormaps["tab20c"].colors)
    # No greys: the reference cells are drawn grey behind the query.
    base = [c for c in base if max(c) - min(c) > 0.05]
    return [base[i % len(base)] for i in range(n)]


def _new_axes(width: float = 6.0, height: float = 5.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _scatter(ax: Any, x: np.ndarray, y: np.ndarray, color: Any, size: float, **kwargs: Any) -> Any:
    return ax.scatter(x, y, c=color, s=size, linewidths=0, rasterized=True, **kwargs)


def _marker_size(n: int) -> float:
    return float(np.clip(6000.0 / max(n, 1), 1.0, 12.0))


def _draw_embedding(ax: Any, table: pd.DataFrame, color_by: ColorBy) -> None:
    x, y = table["x"].to_numpy(float), table["y"].to_numpy(float)
    is_query = (table["type"].astype(str) == "query").to_numpy()
    size = _marker_size(len(table))
    if color_by == "type":
        _scatter(ax, x[~is_query], y[~is_query], _REFERENCE, size, label=f"reference ({(~is_query).sum()})")
        _scatter(ax, x[is_query], y[is_query], _QUERY, size, label=f"query ({is_query.sum()})")
        ax.legend(loc="best", markerscale=max(2.0, 6 / size), frameon=False)
        ax.set_title("Reference and query")
    else:
        _scatter(ax, x[~is_query], y[~is_query], _GREY, size)
        if color_by == "cell_type":
            labels = table.loc[is_query, "cell_type"].astype(str)
            order = labels.value_counts().index.tolist()
            if len(order) > _MAX_LEGEND:
                labels = labels.where(labels.isin(order[: _MAX_LEGEND - 1]), "other")
                order = order[: _MAX_LEGEND - 1] + ["other"]
            colours = dict(zip(order, _palette(len(order))))
            for label in order:
                keep = (labels == label).to_numpy()
                _scatter(ax, x[is_query][keep], y[is_query][keep], [colours[label]], size, label=label)
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=max(2.0, 6 / size),
                      frameon=False)
            ax.set_title("Predicted cell type (query; reference grey)")
        else:
            values = table.loc[is_query, "uncertainty"].to_numpy(float)
            points = _scatter(ax, x[is_query], y[is_query], values, size, cmap="viridis", vmin=0.0, vmax=1.0)
            ax.figure.colorbar(points, ax=ax, label="uncertainty", shrink=0.8)
            ax.set_title("Label uncertainty (query; reference grey)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")


def _draw_bars(fig: Figure, table: pd.DataFrame) -> None:
    query = table[table["type"].astype(str) == "query"]
    stats = query.groupby(query["cell_type"].astype(str))["uncertainty"].agg(["size", "mean"]).sort_values("size")
    left, right = fig.subplots(1, 2, sharey=True)
    positions = np.arange(len(stats))
    colours = _palette(len(stats))[::-1]
    left.barh(positions, stats["size"], color=colours)
    left.set_yticks(positions, stats.index, fontsize=8)
    left.set_xlabel("query cells")
    left.set_title("Predicted cell types")
    right.barh(positions, stats["mean"], color=colours)
    right.set_xlim(0, 1)
    right.set_xlabel("mean uncertainty")
    right.set_title("Uncertainty per type")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _embedding_png(table: pd.DataFrame, color_by: ColorBy) -> bytes:
    fig, ax = _new_axes(7.5 if color_by == "cell_type" else 6.0, 5.0)
    _draw_embedding(ax, table, color_by)
    return _png(fig)


def _bars_png(table: pd.DataFrame) -> bytes:
    n_types = table.loc[table["type"].astype(str) == "query", "cell_type"].nunique()
    fig = Figure(figsize=(9.0, max(2.5, 0.28 * n_types + 1.2)), dpi=_DPI)
    FigureCanvasAgg(fig)
    _draw_bars(fig, table)
    fig.tight_layout()
    return _png(fig)


def plot_embedding_png(table: pd.DataFrame, path: str | Path, color_by: ColorBy = "cell_type") -> Path:
    """Save the joint embedding coloured by ``color_by`` ('type', 'cell_type' or 'uncertainty') as a PNG file."""
    path = Path(path)
    path.write_bytes(_embedding_png(table, color_by))
    return path


# --- HTML -----------------------------------------------------------------------------------------------------
def _value_html(value: Any) -> str:
    if isinstance(value, dict):
        return _dict_table(value) if value else "<em>none</em>"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            return _records_table(list(value))
        return html.escape(", ".join(map(str, value))) if value else "<em>none</em>"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    if value is None:
        return "<em>—</em>"
    return html.escape(str(value))


def _dict_table(data: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_value_html(v)}</td></tr>" for k, v in data.items())
    return f"<table>{rows}</table>"


def _records_table(records: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in records for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_value_html(r.get(c))}</td>" for c in columns) + "</tr>" for r in records)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_html(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(caption, quote=True)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'


def render_report(table: pd.DataFrame, report: dict[str, Any]) -> str:
    """A self-contained HTML page: joint embedding by reference/query, predicted label and uncertainty, per-type
    bars of the query's predicted labels, and the report's figures as tables (nested dicts become sub-tables).

    ``table`` is the mapping's per-cell table (cell_id, x, y, batch, type, cell_type, predicted, uncertainty, ...);
    ``report`` any JSON-like dict; its 'title', when present, titles the page.
    """
    title = str(report.get("title") or "Mapping report")
    n_query = int((table["type"].astype(str) == "query").sum())
    embedding = "".join(
        _figure_html(_embedding_png(table, by), caption)
        for by, caption in (
            ("type", "Joint embedding: reference and query cells"),
            ("cell_type", "Joint embedding: predicted cell type of query cells"),
            ("uncertainty", "Joint embedding: label uncertainty of query cells"),
        )
    )
    bars = _figure_html(_bars_png(table), "Query cells per predicted cell type, and their mean uncertainty")
    figures = {k: v for k, v in report.items() if k != "title"}
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(table) - n_query} reference and {n_query} query cells.</p>"
        f'<h2>Joint embedding</h2><div class="plots">{embedding}</div>'
        f'<h2>Predicted cell types</h2><div class="plots">{bars}</div>'
        f"<h2>Key figures</h2>{_dict_table(figures) if figures else '<p><em>none</em></p>'}"
        "</body></html>\n"
    )
