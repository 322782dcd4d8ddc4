"""gradient_store[shard]: LESS gradient features of a shard's canonical rows at each warm-up checkpoint
(research/targeted.md §3.1): Adam-preconditioned, projected to `proj_dim` by the seeded TRAK projector,
normalized, stored in fp16 as one array file per shard and checkpoint, and a table row_id -> position.

The projection depends only on the seed and the adapter's size, so shards computed apart combine.
Query features (plain SGD gradients) are computed the same way when a targeted selection runs
(gradient_features.query_features), cached by the query set's content."""

import json
import time

import dagster as dg
import numpy as np
import polars as pl

from curation_assets.automation import shard_refresh
from curation_assets.gradient_features import TABLE_SCHEMA, GradientStoreConfig, checkpoint_features, save_array, store_folder, store_settings
from curation_assets.methods import less_features as less
from curation_assets.methods.lora_training import conversation_of, encode_conversation
from curation_assets.partitions import pool_shards
from resources.storage import CurationStorage
from resources.target_model import TargetModelResource


@dg.asset(
    partitions_def=pool_shards,
    group_name="targeted",
    kinds={"pytorch", "numpy", "parquet"},
    pool="gpu",
    automation_condition=shard_refresh(),
    description="LESS gradient features per canonical row and warm-up checkpoint (fp16 array files), with row_id -> position.",
    metadata={"descriptions": {
        "row_id": "Canonical pool row.",
        "position": "Row of its features in each epoch-<e>.npy array of the folder; -1 when it has none.",
        "scored_tokens": "Assistant tokens under the loss within max_length (0: no gradient).",
        "note": "Why the row has no features; null when it has.",
        "folder": "The shard's folder of array files (one per warm-up checkpoint).",
    }},
)
def gradient_store(context: dg.AssetExecutionContext, config: GradientStoreConfig, raw_pool: pl.LazyFrame, warmup_adapter: pl.DataFrame,
                   target_model: TargetModelResource, storage: CurationStorage) -> dg.MaterializeResult:
    rows = raw_pool.filter(pl.col("duplicate_of").is_null()).select("row_id", "messages", "system_prompt").collect()
    folder = store_folder(storage, warmup_adapter, store_settings(config))
    (folder / "settings.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({**store_settings(config), "warmup_key": warmup_adapter["key"][0]}))
    shard_dir = folder / context.partition_key
    tokenizer, _ = target_model.load()
    encoded = [encode_conversation(tokenizer, conversation_of(m, s), config.max_length) for m, s in zip(rows["messages"].to_list(), rows["system_prompt"].to_list())]
    scored = np.array([less.scored_tokens(e) for e in encoded], dtype=np.int32)
    keep = np.flatnonzero(scored > 0)
    position = np.full(len(encoded), -1, dtype=np.int64)
    position[keep] = np.arange(len(keep))
    table = pl.DataFrame({"row_id": rows["row_id"], "position": position, "scored_tokens": scored,
                          "note": [None if s > 0 else f"no assistant token within max_length {config.max_length}" for s in scored]}, schema=TABLE_SCHEMA)
    files = [shard_dir / f"epoch-{e}.npy" for e in warmup_adapter["epoch"]]
    previous = shard_dir / "rows.parquet"
    reused = previous.exists() and all(f.exists() for f in files) and pl.read_parquet(previous)["row_id"].equals(table["row_id"])
    start = time.perf_counter()
    if not reused and len(keep):
        features = checkpoint_features(target_model, warmup_adapter, [encoded[i] for i in keep], config, adam=True, log=context.log.info)
        for f, x in zip(files, features):
            save_array(f, x.astype(np.float16))
    elif not reused:
        for f in files:
            save_array(f, np.zeros((0, config.proj_dim), dtype=np.float16))
    if not reused:
        table.write_parquet(previous)
    seconds = time.perf_counter() - start
    return dg.MaterializeResult(value=table.with_columns(pl.lit(str(shard_dir)).alias("folder")), metadata={
        "dagster/row_count": table.height,
        "rows_with_features": len(keep),
        "rows_without": int((scored == 0).sum()),
        "reused_files": reused,
        "seconds": round(seconds, 2),
        "samples_per_second": round(len(keep) * len(files) / seconds, 2) if seconds > 0 and not reused else None,
        "checkpoints": len(files),
        "dims": config.proj_dim,
        "files": dg.MetadataValue.json([str(f) for f in files]),
        "model": dg.MetadataValue.json(target_model.identity()),
    })
