"""Metadata a person reads at a glance in the Dagster UI: typed tables and small PNG plots."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import dagster as dg
import numpy as np
import orjson
import polars as pl


def _cell(value, width: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _record_value(value, width: int | None):
    """A table cell: numbers rounded to 4 significant digits, lists joined, text cut only past `width`."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = orjson.dumps(value, default=str).decode()
    text = str(value)
    return _cell(text, width) if width else text


_TABLE_TYPES = {pl.Boolean: "bool", pl.String: "string"}


def _column_type(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    return _TABLE_TYPES.get(dtype, "string")


def table(df: pl.DataFrame, width: int | None = None, descriptions: dict[str, str] | None = None) -> dg.MetadataValue:
    """`df` as a Dagster table (sortable in the UI, typed columns); text cells cut past `width` characters."""
    descriptions = descriptions or {}
    schema = dg.TableSchema(columns=[dg.TableColumn(c, _column_type(t), description=descriptions.get(c)) for c, t in df.schema.items()])
    records = [dg.TableRecord({c: _record_value(v, width) for c, v in row.items()}) for row in df.iter_rows(named=True)]
    return dg.MetadataValue.table(records, schema=schema)


def png_md(fig, alt: str = "plot") -> dg.MetadataValue:
    """Embed a matplotlib figure as a PNG data URI inside markdown."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def new_figure(width: float = 6.0, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def histogram(series: dict[str, Sequence[float] | np.ndarray], title: str, xlabel: str, log_x: bool = False, bins: int = 40, why_empty: str | None = None) -> dg.MetadataValue:
    """One overlaid histogram per named series; with no finite value at all, a picture that says
    so (how many values were NaN, and `why_empty` if the caller knows why) instead of empty axes."""
    fig, ax = new_figure()
    raw = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    arrays = {k: a[np.isfinite(a)] for k, a in raw.items()}
    if not any(a.size for a in arrays.values()):
        total = sum(a.size for a in raw.values())
        ax.text(0.5, 0.5, f"no data to plot: {total:,} of {total:,} values NaN" + (f"\n{why_empty}" if why_empty else ""), ha="center", va="center", wrap=True)
        ax.set_axis_off()
        ax.set_title(title)
        return png_md(fig, title)
    finite = np.concatenate([a for a in arrays.values() if a.size])
    if log_x:
        finite = finite[finite > 0]
        lo, hi = (max(finite.min(), 1), max(finite.max(), 2)) if finite.size else (1, 10)
        edges = np.logspace(np.log10(lo), np.log10(hi), bins)
        ax.set_xscale("log")
    else:
        edges = np.histogram_bin_edges(finite, bins=bins)
    for name, values in arrays.items():
        ax.hist(values[values > 0] if log_x else values, bins=edges, alpha=0.6, label=name, density=len(arrays) > 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of rows (density)" if len(arrays) > 1 else "rows")
    if len(arrays) > 1:
        ax.legend()
    return png_md(fig, title)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str = "") -> dg.MetadataValue:
    fig, ax = new_figure(6.0, max(2.0, 0.25 * len(labels) + 0.8))
    ax.barh(list(labels)[::-1], list(values)[::-1])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return png_md(fig, title)


def counts(counts: dict[str, int], key: str = "value", value: str = "rows") -> dg.MetadataValue:
    return table(pl.DataFrame({key: list(counts), value: list(counts.values())}, schema={key: pl.String, value: pl.Int64}))


def _children(nodes: pl.DataFrame) -> dict:
    kids: dict = {}
    for node, parent, rows in nodes.select("node_id", "parent_id", "leaf_rows").sort("leaf_rows", descending=True).iter_rows():
        kids.setdefault(parent, []).append(node)
    return kids


def tree_markdown(nodes: pl.DataFrame, max_depth: int = 3, max_children: int = 8) -> str:
    """An indented outline of the top of the tree: label, leaves and rows per node."""
    info = {n: (label, leaves, rows) for n, label, leaves, rows in nodes.select("node_id", "label", "n_leaves", "leaf_rows").iter_rows()}
    kids = _children(nodes)
    lines: list[str] = []

    def walk(node, depth):
        children = kids.get(node, [])
        for child in children[:max_children]:
            label, leaves, rows = info[child]
            lines.append(f"{'  ' * depth}- **{label}** ({leaves} tags, {int(rows)} rows)")
            if depth + 1 < max_depth:
                walk(child, depth + 1)
        if len(children) > max_children:
            lines.append(f"{'  ' * depth}- … {len(children) - max_children} more")

    walk(0, 0)
    return "\n".join(lines) or "_(empty tree)_"


def sunburst(nodes: pl.DataFrame, rings: int = 3, title: str = "Knowledge tree", coverage: dict[int, float] | None = None) -> dg.MetadataValue:
    """The top `rings` levels as concentric rings; arc width = rows under the node, one colour per
    top-level branch, labels on the first two rings where the arc has room. With `coverage`
    (node_id -> share of the node's rows in the subset), an arc's opacity shows that share."""
    import matplotlib.cm as cm

    fig, ax = new_figure(9.0, 9.0)
    info = {n: (label, rows) for n, label, rows in nodes.select("node_id", "label", "leaf_rows").iter_rows()}
    kids = _children(nodes)
    total = info[0][1] or 1.0
    colors = cm.tab20.colors
    spans = {0: (0.0, 360.0, 0)}
    for ring in range(1, rings + 1):
        next_spans = {}
        for parent, (start, width, color) in spans.items():
            cursor = start
            for i, child in enumerate(kids.get(parent, [])):
                w = 360.0 * info[child][1] / total
                c = color if ring > 1 else i % len(colors)
                next_spans[child] = (cursor, w, c)
                alpha = 1.0 if coverage is None else 0.12 + 0.88 * min(max(coverage.get(child, 0.0), 0.0), 1.0)
                ax.pie([w, 360.0 - w], radius=0.25 + 0.25 * ring, startangle=cursor, counterclock=True,
                       colors=[(*colors[c][:3], alpha), (0, 0, 0, 0)], wedgeprops={"width": 0.24, "edgecolor": "white", "linewidth": 0.5})
                if (ring == 1 and w > 10) or (ring == 2 and w > 6):
                    mid = cursor + w / 2
                    radius = 0.125 + 0.25 * ring
                    angle = np.deg2rad(mid)
                    rotation = 0 if ring == 1 else (mid if -90 <= (mid + 180) % 360 - 180 <= 90 else mid + 180)
                    ax.text(radius * np.cos(angle), radius * np.sin(angle), _cell(info[child][0], 20 if ring == 1 else 16),
                            ha="center", va="center", fontsize=8 if ring == 1 else 6, rotation=rotation, rotation_mode="anchor")
                cursor += w
        spans = next_spans
    ax.set(aspect="equal", title=title)
    if coverage is not None:
        ax.text(0, -1.05, "opacity: share of the node's rows in the subset (faint = not covered)", ha="center", fontsize=8)
    return png_md(fig, title)
