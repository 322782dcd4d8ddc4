"""The selection report: one self-contained HTML page (no external file, pictures inlined) with the
run's settings, the pool and subset summaries, every picture the assets' metadata holds, and a
sample of the reasons for kept and dropped rows. Written by the `selection_report` asset beside the
export and by `curate report`."""

from __future__ import annotations

import datetime as dt
import html
import json
import re

import dagster as dg
import polars as pl

from curation_assets.shards import identity_counts
from resources.storage import CurationStorage

# The assets whose latest materialization's pictures and figures the report shows, in stage order.
SECTIONS = ["raw_pool", "normalized_tags", "knowledge_tree", "instance_scores", "comparative_scores", "selected_subset",
            "selection_reasons", "warmup_adapter", "subset_model", "subset_evaluation"]
IMAGE = re.compile(r"!\[([^\]]*)\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)")
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ddd; padding: .25em .5em; vertical-align: top; text-align: left; }
th { background: #f4f4f4; } figure { display: inline-block; margin: .5em 1em .5em 0; } img { max-width: 100%; }
figcaption { color: #555; font-size: .9em; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: .6em; }
"""
# A picture that does not decode says so on the page (and in data-broken-images, which the tests read).
CHECK = """
window.addEventListener("load", () => {
  const images = [...document.images], broken = images.filter(i => !i.complete || i.naturalWidth === 0);
  document.body.dataset.images = images.length; document.body.dataset.brokenImages = broken.length;
  if (broken.length) document.getElementById("status").innerHTML = `<p class="warning">${broken.length} of ${images.length} pictures failed to load.</p>`;
});
"""


def _table(df: pl.DataFrame, cut: int | None = None) -> str:
    if df.is_empty():
        return "<p><em>(none)</em></p>"

    def cell(v) -> str:
        text = ", ".join(map(str, v)) if isinstance(v, list) else ("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        return html.escape(text if cut is None or len(text) <= cut else text[: cut - 1] + "…")

    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in df.iter_rows())
    return f"<table><tr>{head}</tr>{rows}</table>"


def _metadata_table(value) -> str:
    records = [r.data for r in value.records]
    return _table(pl.DataFrame(records, strict=False, infer_schema_length=None)) if records else "<p><em>(none)</em></p>"


def _latest(instance: dg.DagsterInstance | None, asset: str):
    """The asset's latest materialization (any partition) and its partition, or (None, None)."""
    if instance is None:
        return None, None
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return None, None
    return event.asset_materialization, event.asset_materialization.partition


def _asset_section(asset: str, materialization, partition: str | None) -> str:
    """The pictures, tables and figures of one materialization's metadata."""
    figures, tables, facts = [], [], []
    for label, entry in materialization.metadata.items():
        if label.startswith("dagster/"):
            continue
        value = entry.value if hasattr(entry, "value") else entry
        if isinstance(entry, dg.TableMetadataValue):
            tables.append(f"<h4>{html.escape(label)}</h4>{_metadata_table(entry)}")
        elif isinstance(value, str) and IMAGE.search(value):
            figures += [f'<figure><img alt="{html.escape(alt)}" src="{src}"><figcaption>{html.escape(label)}</figcaption></figure>'
                        for alt, src in IMAGE.findall(value)]
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool) and len(str(value)) < 200:
            facts.append((label, f"{value:.4g}" if isinstance(value, float) else str(value)))
    where = f" (shard {html.escape(partition)})" if partition else ""
    out = [f"<h2>{html.escape(asset)}{where}</h2>"]
    if facts:
        out.append(_table(pl.DataFrame(facts, schema=["figure", "value"], orient="row")))
    out += figures + tables
    return "\n".join(out)


def build_report(storage: CurationStorage, instance: dg.DagsterInstance | None, settings: dict | None = None) -> str:
    """The report's HTML for the data under `storage`, with the pictures of `instance`'s latest
    materializations; `settings`: the project config shown at the top (secrets are env names only)."""
    subset_path, reasons_path = storage.asset_file("selected_subset"), storage.asset_file("selection_reasons")
    if not subset_path.exists() or not reasons_path.exists():
        raise FileNotFoundError(f"no selection under {storage.root}: materialize selected_subset first (curate run)")
    subset, reasons = pl.read_parquet(subset_path), pl.read_parquet(reasons_path)
    pool = storage.scan_partitions("raw_pool")
    counts = identity_counts(pool)
    quarantine = storage.scan_partitions("raw_pool_quarantine")
    quarantined = quarantine.select(pl.len()).collect().item() if quarantine is not None else 0
    strategy = reasons["strategy"][0] if reasons.height else "?"
    rule = reasons["budget_rule"][0] if reasons.height else ""
    summary = pl.DataFrame([
        ("rows stored (every copy)", counts["stored_rows"]), ("canonical rows (candidates)", reasons.height),
        ("duplicates within files", counts["duplicates_within_file"]), ("duplicates across files", counts["duplicates_across_files"]),
        ("quarantined records", quarantined), ("selected rows", subset.height),
    ], schema=["", "rows"], orient="row")
    per_file = (reasons.group_by("source_file").agg(pl.len().alias("pool"), pl.col("selected").sum().alias("subset"))
                .with_columns((100 * pl.col("subset") / pl.col("pool")).round(1).alias("% kept")).sort("pool", descending=True))
    texts = subset.select("row_id", "instruction", "response")
    kept = reasons.filter(pl.col("selected")).sort("rank").head(10).join(texts, on="row_id", how="left").select("rank", "row_id", "instruction", "reason")
    # Dropped rows: the most common reasons first, one example each, then a few more.
    dropped_all = reasons.filter(~pl.col("selected")).with_columns(pl.col("reason").str.split(":").list.first().alias("why"))
    dropped = pl.concat([dropped_all.unique("why", keep="first", maintain_order=True).head(8), dropped_all.head(6)]).unique("row_id", maintain_order=True).head(12)
    if pool is not None:
        dropped = dropped.join(pool.select("row_id", "instruction").unique("row_id").collect(), on="row_id", how="left")
    else:
        dropped = dropped.with_columns(pl.lit(None, pl.String).alias("instruction"))
    reason_counts = dropped_all.group_by("why").len().sort("len", descending=True).rename({"why": "reason", "len": "rows"})

    parts = [
        f"<h1>Selection report: {html.escape(strategy)}, {subset.height:,} of {reasons.height:,} rows</h1>",
        '<div id="status"></div>',
        f"<p>{html.escape(rule)}. Data home <code>{html.escape(str(storage.root))}</code>; written "
        f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
        "<h2>Pool and subset</h2>", _table(summary), "<h3>Per source file</h3>", _table(per_file),
        "<h2>Why rows were kept</h2>", _table(kept, 240),
        "<h2>Why rows were dropped</h2>", _table(reason_counts), _table(dropped.select("row_id", "instruction", "reason"), 240),
    ]
    for asset in SECTIONS:
        materialization, partition = _latest(instance, asset)
        if materialization is not None:
            parts.append(_asset_section(asset, materialization, partition))
    if settings:
        parts += ["<h2>Settings</h2>", f"<pre>{html.escape(json.dumps(settings, indent=2, default=str))}</pre>"]
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Selection report: {html.escape(strategy)}</title>"
            f"<style>{STYLE}</style></head><body>{body}<script>{CHECK}</script></body></html>")
