"""raw_pool materialized in-process with a real Dagster instance and the Polars Parquet IO manager."""

import json

import dagster as dg
import polars as pl
import pytest

from conftest import land
from curation_assets.raw_pool import raw_pool, raw_pool_reconciles
from metadata import table_text

ASSETS = [raw_pool, raw_pool_reconciles]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def materialize(resources, instance, partition, **kwargs):
    instance.add_dynamic_partitions("pool_shards", [partition])
    return dg.materialize(ASSETS, resources=resources, partition_key=partition, instance=instance, raise_on_error=False, **kwargs)


def test_materialize_writes_pool_quarantine_and_metadata(tmp_path, resources, instance):
    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(20)]
    rows += [rows[3], {"instruction": "no output"}]
    key = land(resources, write_jsonl(tmp_path / "shard.jsonl", rows))
    result = materialize(resources, instance, key)
    assert result.success

    storage = resources["storage"]
    pool = pl.read_parquet(storage.asset_file("raw_pool", key))
    quarantine = pl.read_parquet(storage.asset_file("raw_pool_quarantine", key))
    assert pool.height == 21 and pool["duplicate_of"].to_list()[-1] == f"{key}#4"
    assert quarantine.select("source_row", "reason").rows() == [(22, "missing_field")]

    meta = result.asset_materializations_for_node("raw_pool")[0].metadata
    assert meta["dagster/row_count"].value == 21
    assert meta["pool_rows"].value == 20 and meta["duplicates"].value == 1 and meta["quarantined"].value == 1
    assert "data:image/png;base64," in meta["lengths"].value
    assert "Question 0?" in table_text(meta["preview"]) and "alpaca" in table_text(meta["rows_per_shape"])
    assert {c.name for c in meta["dagster/column_schema"].schema.columns} >= {"row_id", "messages", "duplicate_of"}
    qmeta = result.asset_materializations_for_node("raw_pool")[1].metadata
    assert "missing_field" in table_text(qmeta["top_reasons"])

    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["input_records"].value == 22 and check.metadata["unaccounted"].value == 0


def test_duplicates_across_shards_follow_pool_order_not_run_order(tmp_path, resources, instance):
    from curation_assets.shards import pool_rows, with_first_copy

    first = land(resources, write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]))
    second = land(resources, write_jsonl(tmp_path / "b.jsonl", [{"conversations": [{"from": "human", "value": "p2"}, {"from": "gpt", "value": "c2"}]}, {"prompt": "p3", "completion": "c3"}]))
    storage = resources["storage"]
    # The later-landed shard runs first: raw_pool flags within its file only, so nothing depends on the order.
    assert materialize(resources, instance, second).success
    assert materialize(resources, instance, first).success
    assert pl.read_parquet(storage.asset_file("raw_pool", second))["duplicate_of"].null_count() == 2
    pool = storage.scan_partitions("raw_pool")
    copies = with_first_copy(pool).filter(pl.col("first_copy").is_not_null()).collect()
    assert copies.select("source_partition", "first_copy").rows() == [(second, f"{first}#2")]
    assert pool_rows(pool).collect()["source_partition"].to_list() == [first, first, second]


def test_unreadable_file_fails_only_its_partition(tmp_path, resources, instance):
    good = land(resources, write_jsonl(tmp_path / "good.jsonl", [{"prompt": "p", "completion": "c"}]))
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"}, {"instr')
    bad = land(resources, broken)
    failed = materialize(resources, instance, bad)
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "broken.json" in message and "not valid JSON" in message
    assert materialize(resources, instance, good).success
    assert not resources["storage"].asset_file("raw_pool", bad).exists()


@pytest.mark.parametrize(
    "bug,failing_metric,value",
    [
        (lambda lf: lf.filter(pl.col("source_row") != 3), "unaccounted", 1),  # a row lost
        (lambda lf: pl.concat([lf, lf.head(2)]), "source_rows_seen_twice", 2),  # rows written twice
    ],
)
def test_reconcile_check_catches_lost_or_doubled_rows(tmp_path, resources, instance, monkeypatch, bug, failing_metric, value):
    import curation_assets.raw_pool as module

    real = module.finish_pool
    monkeypatch.setattr(module, "finish_pool", lambda pool: bug(real(pool)))
    key = land(resources, write_jsonl(tmp_path / "s.jsonl", [{"prompt": f"p{i}", "completion": "c"} for i in range(5)]))
    result = materialize(resources, instance, key)
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata[failing_metric].value == value
    assert not result.success  # the check is blocking


def test_sidecar_column_map(tmp_path, resources, instance):
    data = tmp_path / "cot.tsv"
    data.write_text("What is 2+2?\t4\tTwo plus two\\nis four.\n")
    (tmp_path / "cot.tsv.ingest.json").write_text(json.dumps({
        "has_header": False, "quote_char": None, "unescape_newlines": True,
        "column_map": {"instruction": "column_1", "response": "{column_3} So the answer is {column_2}."},
    }))
    key = land(resources, data)
    assert materialize(resources, instance, key).success
    pool = pl.read_parquet(resources["storage"].asset_file("raw_pool", key))
    assert pool["response"].to_list() == ["Two plus two\nis four. So the answer is 4."]


@pytest.mark.parametrize("config,reason", [({"max_record_bytes": 50}, "too_large"), ({"allow_empty_response": True}, None)])
def test_run_config_defaults(tmp_path, resources, instance, config, reason):
    key = land(resources, write_jsonl(tmp_path / "c.jsonl", [{"instruction": "Explain gravity in detail please.", "output": ""}]))
    result = materialize(resources, instance, key, run_config={"ops": {"raw_pool": {"config": config}}})
    assert result.success
    quarantine = pl.read_parquet(resources["storage"].asset_file("raw_pool_quarantine", key))
    assert quarantine["reason"].to_list() == ([reason] if reason else [])

GOOD = {"instruction": "Name a prime number.", "output": "Seven."}


def deep_text(levels: int) -> str:
    """The JSON text of a record nesting `levels` lists (built as text: no recursion anywhere)."""
    return '{"instruction": "deep", "output": "x", "payload": ' + "[" * levels + '"bottom"' + "]" * levels + "}"


def test_deep_record_through_raw_pool_keeps_the_file_and_reconciles(tmp_path, resources, instance):
    path = tmp_path / "pool.json"
    path.write_text("[" + json.dumps(GOOD) + ", " + deep_text(10_000) + "]")
    key = land(resources, path)
    instance.add_dynamic_partitions("pool_shards", [key])
    result = dg.materialize([raw_pool, raw_pool_reconciles], resources=resources, partition_key=key, instance=instance)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)
    quarantine = pl.read_parquet(resources["storage"].asset_file("raw_pool_quarantine", key))
    assert quarantine["reason"].to_list() == ["too_deep"]
