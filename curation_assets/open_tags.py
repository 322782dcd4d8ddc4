"""open_tags: open-set tags [{tag, explanation}] for each canonical row of a shard."""

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.automation import shard_refresh
from curation_assets.partitions import pool_shards
from curation_assets.rowwise import compute_missing
from resources.llm import ENDPOINT_RETRY_POLICY
from resources.storage import CurationStorage
from resources.tagger import TaggerResource

TAG_TYPE = pl.List(pl.Struct({"tag": pl.String, "explanation": pl.String}))
COLUMNS = {
    "row_id": "Canonical pool row.",
    "tags": "The tagger's tags, each with its explanation; null unless status is ok.",
    "status": "ok, failed (see error) or skipped (beyond sample_rows).",
    "error": "Why tagging failed (the last attempt's reason); null when ok.",
    "attempts": "Calls made for the row, retries included.",
    "tagger_version": "Hash of the tagger's backend, model, prompt and generation settings: rows are reused only under the same one.",
}


class OpenTagsConfig(dg.Config):
    chunk_rows: int = Field(256, description="Rows tagged (and cached) per chunk.")
    sample_rows: int | None = Field(None, description="Tag at most this many rows per shard (lowest row_id first), e.g. for a slow local LLM; the others are kept with status 'skipped'.")


def tag_rows(rows: pl.DataFrame, tagger: TaggerResource) -> pl.DataFrame:
    """Tag `rows` (row_id, instruction, input); failed rows keep their reason."""
    texts = [tagger.text_for(i, x) for i, x in zip(rows["instruction"], rows["input"])]
    results = tagger.tag(texts)
    return pl.DataFrame(
        {
            "row_id": rows["row_id"],
            "tags": [r.value if r.ok else None for r in results],
            "status": ["ok" if r.ok else "failed" for r in results],
            "error": [r.error for r in results],
            "attempts": [r.attempts for r in results],
            "tagger_version": [tagger.version()] * rows.height,
        },
        schema={"row_id": pl.String, "tags": TAG_TYPE, "status": pl.String, "error": pl.String, "attempts": pl.Int32, "tagger_version": pl.String},
    )


def _metadata(tags: pl.DataFrame, stats, tagger: TaggerResource) -> dict:
    exploded = tags.filter(pl.col("status") == "ok").select(pl.col("tags").list.eval(pl.element().struct.field("tag"))).explode("tags")
    top = exploded.group_by("tags").len().sort(["len", "tags"], descending=[True, False]).head(20)
    failed = tags.filter(pl.col("status") == "failed")
    reasons = failed.group_by("error").len().sort("len", descending=True).head(10)
    per_row = tags.select(pl.col("tags").list.len().fill_null(0))["tags"]
    meta = {
        "dagster/row_count": tags.height,
        **stats.metadata(),
        "failed_rows": failed.height,
        "skipped_rows": int((tags["status"] == "skipped").sum()),
        "failed_by_reason": ui.table(reasons.rename({"error": "reason", "len": "rows"})),
        "top_tags": ui.table(top.rename({"tags": "tag", "len": "rows"})),
        "tags_per_row": float(per_row.mean() or 0),
        "tagger": dg.MetadataValue.json({"version": tagger.version(), "backend": tagger.backend, "model": tagger.model if tagger.backend != "keyphrase" else tagger.embedder_model, "prompt_style": tagger.prompt_style}),
    }
    if top.height:
        meta["tag_frequency"] = ui.bar_chart(top["tags"].to_list(), top["len"].to_list(), "Most frequent tags in this shard", "rows")
    return meta


@dg.asset(
    partitions_def=pool_shards,
    group_name="tags",
    kinds={"parquet", "polars"},
    pool="gpu",
    automation_condition=shard_refresh(),
    retry_policy=ENDPOINT_RETRY_POLICY,
    description="Open tags per canonical row; rows already tagged by the same tagger config are reused.",
    metadata={"descriptions": COLUMNS},
)
def open_tags(
    context: dg.AssetExecutionContext, config: OpenTagsConfig, raw_pool: pl.LazyFrame, tagger: TaggerResource, storage: CurationStorage
) -> dg.MaterializeResult:
    rows = raw_pool.filter(pl.col("duplicate_of").is_null()).select("row_id", "instruction", "input").collect()
    skipped = rows.head(0)
    if config.sample_rows is not None and rows.height > config.sample_rows:
        order = rows.sort("row_id")
        rows, skipped = order.head(config.sample_rows), order.tail(rows.height - config.sample_rows)
    cache = storage.row_cache("open_tags", tagger.version(), context.log.warning)
    tags, stats = compute_missing(
        rows,
        cache,
        lambda chunk: tag_rows(chunk, tagger),
        chunk_rows=config.chunk_rows,
        keep=lambda result: result["status"] == "ok",
        log=context.log.info,
    )
    if skipped.height:
        context.log.info(f"{skipped.height} rows outside the tagging sample (sample_rows={config.sample_rows})")
        reason = f"outside the tagging sample (open_tags.sample_rows = {config.sample_rows})"
        tags = pl.concat([tags, skipped.select("row_id", pl.lit(None, TAG_TYPE).alias("tags"), pl.lit("skipped").alias("status"), pl.lit(reason).alias("error"), pl.lit(0, pl.Int32).alias("attempts"), pl.lit(tagger.version()).alias("tagger_version"))], how="diagonal_relaxed")
    return dg.MaterializeResult(value=tags, metadata=_metadata(tags, stats, tagger))
