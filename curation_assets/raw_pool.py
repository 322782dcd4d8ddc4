"""raw_pool: one landed file -> normalized pool rows plus a quarantine table, reconciled."""

import os

import dagster as dg
import orjson
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.landing import scan_landing
from curation_assets.methods.ingest import (
    IngestOptions,
    UnreadableFileError,
    count_records,
    ingest_file,
    finish_pool,
    load_options,
)
from curation_assets.partitions import pool_shards
from resources.storage import CurationStorage

INGEST_VERSION = "2"  # 2: control characters stripped, too_deep
ROW_GROUP_ROWS = 20_000  # small row groups keep the streaming writes of big shards in bounded memory

POOL_COLUMNS = {
    "row_id": "Content hash of the normalized conversation (system prompt included).",
    "source_partition": "Landed file version (partition key) the row came from.",
    "source_file": "Path of the file as dropped in the landing folder.",
    "source_row": "1-based record number in the file (the line number for JSON Lines).",
    "source_format": "File format: json, jsonl, parquet, csv or tsv.",
    "shape": "Record shape recognized: alpaca, prompt_completion, question_answer, sharegpt, openai_messages.",
    "system_prompt": "System prompt, if any.",
    "messages": "The conversation as role/content turns (system prompt excluded).",
    "instruction": "First user turn (Alpaca: the instruction alone).",
    "input": "Alpaca input field; empty for other shapes.",
    "response": "Last assistant turn.",
    "extra": "The record's other fields, as JSON (kept, not used by the methods); null when none.",
    "n_turns": "Number of assistant turns.",
    "instruction_chars": "Characters of the instruction.",
    "input_chars": "Characters of the input.",
    "response_chars": "Characters of the response.",
    "total_chars": "Characters of every turn and the system prompt.",
    "duplicate_of": "partition#row of the first copy of this conversation in the same file; null for its first copy (copies across files are resolved by the global steps, in pool order).",
    "landed_at": "When the file was landed (UTC); pool order is (landed_at, partition, source_row).",
}
QUARANTINE_COLUMNS = {
    "source_partition": "Landed file version (partition key) the record came from.",
    "source_file": "Path of the file as dropped in the landing folder.",
    "source_row": "1-based record number in the file (the line number for JSON Lines).",
    "reason": "Reason code: invalid_json, invalid_utf8, missing_field, too_large, too_deep, no_assistant_turn, empty_response, ...",
    "detail": "What exactly was wrong.",
    "raw_preview": "The record's first 300 characters as read.",
}


class RawPoolConfig(dg.Config):
    """Defaults for every file; a sidecar `<file>.ingest.json` overrides them per file."""

    max_record_bytes: int = Field(1_000_000, description="Records larger than this go to quarantine.")
    max_depth: int = Field(64, description="Records whose lists/objects nest deeper go to quarantine (too_deep).")
    allow_empty_response: bool = Field(False, description="Keep rows without a response (target sets).")
    strip_markers: list[str] = Field(["<|endoftext|>"], description="End markers removed from responses.")
    column_map: dict[str, str] = Field({}, description="target field -> source column or {template}.")
    chunk_rows: int = Field(50_000, description="Rows normalized per chunk (bounds memory).")

    def options(self) -> IngestOptions:
        return IngestOptions(
            max_record_bytes=self.max_record_bytes,
            max_depth=self.max_depth,
            allow_empty_response=self.allow_empty_response,
            strip_markers=list(self.strip_markers),
            column_map=dict(self.column_map),
            chunk_rows=self.chunk_rows,
        )


def _pool_metadata(pool: pl.DataFrame | pl.LazyFrame, summary, source: str, options: IngestOptions) -> dict:
    pool = pool.lazy()
    stats = pool.select(
        pl.len().alias("rows"),
        pl.col("duplicate_of").is_not_null().sum().alias("duplicates"),
    ).collect().row(0, named=True)
    shapes = pool.group_by("shape").len().sort("len", descending=True).collect()
    lengths = pool.filter(pl.col("duplicate_of").is_null()).select("instruction_chars", "response_chars").collect()
    preview = (
        pool.filter(pl.col("duplicate_of").is_null())
        .select("row_id", "source_row", "shape", "instruction", "response")
        .head(10)
        .collect()
    )
    return {
        "dagster/row_count": stats["rows"],
        "source_file": source,
        "input_records": summary.input_records,
        "pool_rows": stats["rows"] - stats["duplicates"],
        "duplicates": stats["duplicates"],
        "quarantined": summary.quarantined,
        "rows_per_shape": ui.counts(dict(shapes.iter_rows()), "shape"),
        "preview": ui.table(preview, 160),
        "lengths": ui.histogram(
            {"instruction": lengths["instruction_chars"], "response": lengths["response_chars"]},
            "Length of canonical rows",
            "characters",
            log_x=True,
        ),
        "ingest_options": dg.MetadataValue.json(options.as_dict()),
        "ingest_version": INGEST_VERSION,
    }


def _quarantine_metadata(quarantine: pl.DataFrame) -> dict:
    reasons = quarantine.group_by("reason").len().sort("len", descending=True)
    examples = quarantine.group_by("reason", maintain_order=True).first().select("reason", "source_row", "detail")
    return {
        "dagster/row_count": quarantine.height,
        "top_reasons": ui.counts(dict(reasons.head(10).iter_rows()), "reason"),
        "examples": ui.table(examples.head(10), 160),
    }


@dg.multi_asset(
    outs={
        "raw_pool": dg.AssetOut(
            description="Normalized pool rows of one landed file, duplicates flagged (not dropped).",
            metadata={"descriptions": POOL_COLUMNS, "row_group_size": ROW_GROUP_ROWS},
            dagster_type=pl.LazyFrame,
            kinds={"parquet", "polars"},
        ),
        "raw_pool_quarantine": dg.AssetOut(
            description="Records of one landed file that could not be normalized, with the reason.",
            metadata={"descriptions": QUARANTINE_COLUMNS},
            dagster_type=pl.DataFrame,
            kinds={"parquet", "polars"},
        ),
    },
    partitions_def=pool_shards,
    group_name="ingest",
    code_version=INGEST_VERSION,
)
def raw_pool(context: dg.AssetExecutionContext, config: RawPoolConfig, storage: CurationStorage):
    partition = context.partition_key
    manifest = storage.landed_manifest(partition)
    data_path = storage.landed / partition / manifest["file_name"]
    try:
        options = load_options(data_path, base=config.options())
        with storage.staging(f"raw_pool-{partition}") as staging:
            summary = ingest_file(
                data_path, options, partition=partition, source_file=manifest["source_path"], staging_dir=staging
            )
            # Duplicates within this file only: copies across files are decided by the global steps
            # (curation_assets/shards.py), so this run never reads another shard's file.
            pool = finish_pool(_scan(summary.pool_parts, "pool"))
            pool = pool.with_columns(pl.lit(manifest["landed_at"]).alias("landed_at"))
            staged = staging / "pool.parquet"
            pool.sink_parquet(staged, row_group_size=ROW_GROUP_ROWS)
            quarantine = _scan(summary.quarantine_parts, "quarantine").collect()
            metadata = _pool_metadata(pl.scan_parquet(staged), summary, manifest["source_path"], options)
            context.log.info(
                f"{manifest['source_path']}: {summary.input_records} records -> {metadata['pool_rows']} pool rows, "
                f"{metadata['duplicates']} duplicates, {summary.quarantined} quarantined"
            )
            # The IO manager writes each output when it is yielded, before the staging folder goes.
            yield dg.Output(pl.scan_parquet(staged), "raw_pool", metadata=metadata)
            yield dg.Output(quarantine, "raw_pool_quarantine", metadata=_quarantine_metadata(quarantine))
    except UnreadableFileError as exc:
        raise dg.Failure(description=f"cannot read landed file {manifest['source_path']}: {exc}") from exc


def _scan(parts, kind: str) -> pl.LazyFrame:
    from curation_assets.methods.ingest import POOL_SCHEMA, QUARANTINE_SCHEMA

    if parts:
        return pl.scan_parquet([str(p) for p in parts])
    schema = POOL_SCHEMA if kind == "pool" else QUARANTINE_SCHEMA
    return pl.from_arrow(schema.empty_table()).lazy()


@dg.asset_check(
    asset="raw_pool",
    partitions_def=pool_shards,
    additional_ins={"quarantine": dg.AssetIn("raw_pool_quarantine")},
    blocking=True,
    description="Every input record is a pool row, a flagged duplicate or a quarantined row, exactly once.",
)
def raw_pool_reconciles(
    context: dg.AssetCheckExecutionContext, raw_pool: pl.LazyFrame, quarantine: pl.LazyFrame, storage: CurationStorage
) -> dg.AssetCheckResult:
    partition = context.partition_key
    manifest = storage.landed_manifest(partition)
    data_path = storage.landed / partition / manifest["file_name"]
    input_records = count_records(data_path, load_options(data_path))
    pool = raw_pool.select("source_row", "duplicate_of").collect()
    quarantined = quarantine.select("source_row").collect()
    rows = pl.concat([pool.select("source_row"), quarantined])
    n_pool = int(pool["duplicate_of"].is_null().sum())
    n_dup = pool.height - n_pool
    repeated = rows.height - rows["source_row"].n_unique()
    passed = input_records == n_pool + n_dup + quarantined.height and repeated == 0
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "input_records": input_records,
            "pool_rows": n_pool,
            "duplicates": n_dup,
            "quarantined": quarantined.height,
            "unaccounted": input_records - (n_pool + n_dup + quarantined.height),
            "source_rows_seen_twice": repeated,
        },
    )


class LandingSensorConfig(dg.ConfigurableResource):
    """How the landing sensor scans: bytes hashed per tick and how old a file must be."""

    max_bytes_per_tick: int = 20 << 30
    min_age_seconds: float = 2.0


@dg.sensor(
    name="landing_sensor",
    target=dg.AssetSelection.assets("raw_pool", "raw_pool_quarantine"),  # by key: definitions.py sets raw_pool's config defaults
    minimum_interval_seconds=int(os.environ.get("CURATION_LANDING_INTERVAL", "30")),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lands each new file version in the landing folder as a pool shard and ingests it.",
)
def landing_sensor(context: dg.SensorEvaluationContext, storage: CurationStorage, landing: LandingSensorConfig):
    storage.landing.mkdir(parents=True, exist_ok=True)
    cursor = orjson.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(pool_shards.name))
    landed, cursor = scan_landing(
        storage.landing,
        storage.landed,
        cursor,
        known,
        max_bytes=landing.max_bytes_per_tick,
        min_age_seconds=landing.min_age_seconds,
    )
    new = [f.partition for f in landed if f.partition not in known]
    if not new:
        return dg.SensorResult(skip_reason=f"no new files in {storage.landing}", cursor=orjson.dumps(cursor).decode())
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=key, run_key=key) for key in new],
        dynamic_partitions_requests=[pool_shards.build_add_request(new)],
        cursor=orjson.dumps(cursor).decode(),
    )
