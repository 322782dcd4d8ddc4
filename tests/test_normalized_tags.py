"""normalized_tags.py: the whole pool's canonical tags, TACOS clusters and tag vocabulary, built
from every shard's open tags (one row per canonical pool row, in pool order)."""

import json

import dagster as dg
import polars as pl

from conftest import land
from curation_assets.normalized_tags import normalized_tags
from curation_assets.open_tags import open_tags
from curation_assets.raw_pool import raw_pool

ASSETS = [raw_pool, open_tags, normalized_tags]
ROWS = [
    {"instruction": "Write a Python function that sorts a list of numbers.", "output": "def s(x): return sorted(x)"},
    {"instruction": "Write a Python function that reverses a list.", "output": "def r(x): return x[::-1]"},
    {"instruction": "Explain how photosynthesis works in plants.", "output": "Light becomes sugar."},
    {"instruction": "Explain why plants need sunlight for photosynthesis.", "output": "For energy."},
]


def shards(tmp_path, resources, instance):
    keys = []
    for name, rows in (("a.jsonl", ROWS[:3]), ("b.jsonl", ROWS[3:] + ROWS[:1])):  # b repeats a's first row
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        keys.append(land(resources, path))
    instance.add_dynamic_partitions("pool_shards", keys)
    for key in keys:
        assert dg.materialize(ASSETS[:2], resources=resources, partition_key=key, instance=instance).success
    return keys


def normalize(resources, instance, **config):
    result = dg.materialize(ASSETS, resources=resources, instance=instance, selection=["normalized_tags", "tag_vocabulary"],
                            run_config={"ops": {"normalized_tags": {"config": config}}})
    assert result.success
    storage = resources["storage"]
    meta = result.asset_materializations_for_node("normalized_tags")
    return pl.read_parquet(storage.asset_file("normalized_tags")), pl.read_parquet(storage.asset_file("tag_vocabulary")), {m.asset_key.path[-1]: m.metadata for m in meta}


def test_one_row_per_canonical_pool_row_with_tags_from_the_vocabulary(tmp_path, resources, instance):
    shards(tmp_path, resources, instance)
    rows, vocabulary, meta = normalize(resources, instance, alpha=1, n_clusters=2, merge_threshold=None)
    pool = pl.concat([pl.read_parquet(f) for f in resources["storage"].partition_files("raw_pool")])
    canonical = pool.filter(pl.col("duplicate_of").is_null())["row_id"].unique()
    assert rows.height == 4 == canonical.len() and set(rows["row_id"]) == set(canonical)  # the repeat across files counted once
    assert rows["row_id"].is_unique().all()
    kept = set(vocabulary["canonical_tag"].drop_nulls())
    assert all(set(t) <= kept for t in rows["canonical_tags"]) and rows["n_canonical"].to_list() == rows["canonical_tags"].list.len().to_list()
    assert set(vocabulary["cluster"].drop_nulls()) <= {0, 1} and rows["labelset_representative"].any()
    m = meta["normalized_tags"]
    assert m["dagster/row_count"].value == 4 and m["rows_without_tags"].value == 0 and "warning" not in m


def test_an_alpha_above_every_tags_count_warns_and_leaves_rows_untagged(tmp_path, resources, instance):
    shards(tmp_path, resources, instance)
    rows, vocabulary, meta = normalize(resources, instance, alpha=100, n_clusters=2, merge_threshold=None)
    assert rows.height == 4 and rows["n_canonical"].sum() == 0 and vocabulary["canonical_tag"].null_count() == vocabulary.height
    assert "dropped every tag" in meta["normalized_tags"]["warning"].value and meta["normalized_tags"]["rows_without_tags"].value == 4
