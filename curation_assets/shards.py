"""Reading the per-shard assets from the global ones: dependencies on every shard, their stored
partitions as one lazy frame, and the pool's canonical rows.

Identity across files is decided here, and only here: `raw_pool[shard]` flags the duplicates
within its own file (it never reads another shard, so shards that land together cannot race), and
the global steps take, of each conversation, the copy first in pool order: landing time, then
partition key (the file's path), then record number. The same pool gives the same canonical rows
whatever order its shards ran in.

A global step reads the shards whose outputs of every per-shard asset it depends on are stored.
A shard whose run failed (an output missing) is left out with a warning in the step's log and
metadata (`skipped_shards`), so one bad file does not block the pool; `curate run` reports it and
exits non-zero. An output that is stored but unreadable is not skipped: it fails the step with its
path and the command that repairs it.
"""

import dagster as dg
import polars as pl

from curation_assets.methods.plugin import Strategy
from curation_assets.methods.registry import SCORE_METHODS
from curation_assets.partitions import pool_shards
from resources.storage import CurationStorage

POOL_ORDER = ("landed_at", "source_partition", "source_row")


def all_shards(*assets: str) -> list[dg.AssetDep]:
    """Dependencies on every shard of per-shard assets, read from storage by `shard_frames`
    (lazily, and the same whether there is one shard or thousands)."""
    return [dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in assets]


# Per-shard assets only some strategies read (targeted selection): a shard without them is not
# skipped; the strategy that reads them says which rows lack features.
OPTIONAL_SHARD_INPUTS = frozenset({"gradient_store"})


def shard_inputs(context) -> list[str]:
    """The per-shard assets a global step declared with `all_shards` (none for asset checks), less
    the optional ones."""
    assets_def = getattr(context, "assets_def", None)
    specs = assets_def.specs if assets_def is not None else []
    declared = {d.asset_key.to_user_string() for s in specs for d in s.deps if isinstance(d.partition_mapping, dg.AllPartitionMapping)}
    return sorted(declared - OPTIONAL_SHARD_INPUTS)


def complete_shards(storage: CurationStorage, partitions: list[str], assets: list[str]) -> tuple[list[str], list[str]]:
    """(usable, skipped): partitions with a stored output of every one of `assets`, and the rest."""
    usable = [p for p in partitions if all(storage.asset_file(a, p).exists() for a in assets)]
    kept = set(usable)
    return usable, [p for p in partitions if p not in kept]


def usable_shards(context, storage: CurationStorage) -> list[str]:
    """The shards this step reads; warns once per step about the ones it skips."""
    cached = getattr(context, "_curation_shards", None)
    if cached is not None:
        return cached
    partitions = sorted(context.instance.get_dynamic_partitions(pool_shards.name))
    usable, skipped = complete_shards(storage, partitions, shard_inputs(context) or ["raw_pool"])
    if skipped:
        context.log.warning(
            f"{len(skipped)} of {len(partitions)} shards have no stored {'/'.join(shard_inputs(context))} "
            f"(their runs failed or have not run) and are left out: {skipped[:20]}"
        )
    try:
        context._curation_shards = usable
        context._curation_skipped = skipped
    except AttributeError:  # a context that takes no attributes: recomputed per call
        pass
    return usable


def skipped_shards(context) -> list[str]:
    """The shards `usable_shards` left out of this step (for its metadata)."""
    return list(getattr(context, "_curation_skipped", []))


def shard_frames(context: dg.AssetExecutionContext, storage: CurationStorage, asset: str) -> pl.LazyFrame | None:
    return storage.scan_partitions(asset, only=usable_shards(context, storage))


def pool_rows(raw_pool: pl.LazyFrame | None) -> pl.LazyFrame:
    """Canonical rows of all shards, each conversation once, in pool order (POOL_ORDER), so that
    rows of a newly landed file come last and a copy in a later file is never the canonical one."""
    if raw_pool is None:
        return pl.LazyFrame(schema={"row_id": pl.String, "source_partition": pl.String, "source_row": pl.Int64, "landed_at": pl.String, "response_chars": pl.Int32})
    pool = raw_pool.filter(pl.col("duplicate_of").is_null())
    return pool.sort(*POOL_ORDER, nulls_last=False).unique("row_id", keep="first", maintain_order=True)


def with_first_copy(raw_pool: pl.LazyFrame) -> pl.LazyFrame:
    """Every stored row with `first_copy`: partition#row of its conversation's canonical copy across
    the pool (null for that copy itself). Within a file this equals raw_pool's `duplicate_of`."""
    ordered = raw_pool.sort(*POOL_ORDER, nulls_last=False)
    first = pl.concat_str(pl.col("source_partition"), pl.lit("#"), pl.col("source_row").cast(pl.String)).first().over("row_id")
    here = pl.concat_str(pl.col("source_partition"), pl.lit("#"), pl.col("source_row").cast(pl.String))
    return ordered.with_columns(pl.when(first != here).then(first).alias("first_copy"))


def identity_counts(raw_pool: pl.LazyFrame | None) -> dict:
    """Rows stored, canonical rows, and copies flagged within a file or found across files."""
    if raw_pool is None:
        return {"stored_rows": 0, "canonical_rows": 0, "duplicates_within_file": 0, "duplicates_across_files": 0}
    stats = raw_pool.select(
        pl.len().alias("stored_rows"),
        pl.col("row_id").n_unique().alias("canonical_rows"),
        pl.col("duplicate_of").is_not_null().sum().alias("duplicates_within_file"),
    ).collect().row(0, named=True)
    stats["duplicates_across_files"] = stats["stored_rows"] - stats["canonical_rows"] - stats["duplicates_within_file"]
    return stats


def load_candidates(context, storage: CurationStorage, normalized_tags: pl.DataFrame, comparisons: pl.DataFrame, strategy: Strategy) -> pl.DataFrame:
    """Canonical rows in pool order with their scores, canonical tags, clusters and mean comparative score."""
    pool = pool_rows(shard_frames(context, storage, "raw_pool")).select(
        "row_id", "instruction", "input", "response", "messages", "system_prompt", "source_partition", "source_file", "source_row", "shape"
    ).collect()
    scores = shard_frames(context, storage, "instance_scores")
    if scores is not None:
        # Per-token columns are large: only the strategies that read them load them.
        heavy = [c for m in SCORE_METHODS.values() for c in m.heavy if c not in strategy.reads]
        scores = scores.select(pl.exclude(heavy)).unique("row_id", keep="first")
        pool = pool.join(scores.collect(), on="row_id", how="left", maintain_order="left")
    if normalized_tags is not None and not normalized_tags.is_empty():
        pool = pool.join(normalized_tags.select("row_id", "canonical_tags", "clusters", "labelset_representative"), on="row_id", how="left", maintain_order="left")
    if comparisons is not None and not comparisons.is_empty():
        mean = comparisons.drop_nulls("score").group_by("row_id").agg(pl.col("score").mean().alias("comparative_score"))
        pool = pool.join(mean, on="row_id", how="left", maintain_order="left")
    return pool
