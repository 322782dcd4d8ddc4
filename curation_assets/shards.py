"""Reading the per-shard assets from the global ones: dependencies on every shard, their stored
partitions as one lazy frame, and the pool's canonical rows."""

import dagster as dg
import polars as pl

from curation_assets.partitions import pool_shards
from resources.storage import CurationStorage


def all_shards(*assets: str) -> list[dg.AssetDep]:
    """Dependencies on every shard of per-shard assets, read from storage by `shard_frames`
    (lazily, and the same whether there is one shard or thousands)."""
    return [dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in assets]


def shard_frames(context: dg.AssetExecutionContext, storage: CurationStorage, asset: str) -> pl.LazyFrame | None:
    return storage.scan_partitions(asset, only=context.instance.get_dynamic_partitions(pool_shards.name))


def pool_rows(raw_pool: pl.LazyFrame | None) -> pl.LazyFrame:
    """Canonical rows of all shards, each conversation once, in pool order: landing time, then
    partition and source row, so that rows of a newly landed file come last."""
    if raw_pool is None:
        return pl.LazyFrame(schema={"row_id": pl.String, "source_partition": pl.String, "source_row": pl.Int64, "landed_at": pl.String, "response_chars": pl.Int32})
    pool = raw_pool.filter(pl.col("duplicate_of").is_null())
    return pool.sort("landed_at", "source_partition", "source_row", nulls_last=False).unique("row_id", keep="first", maintain_order=True)
