"""open_tags in Dagster: per-shard, cached per tagger config, resumable, and losing no row."""

import json

import dagster as dg
import polars as pl
import pytest

from conftest import ingested_shard
from curation_assets.open_tags import open_tags
from curation_assets.raw_pool import raw_pool
from openai_stub import stub_server, tags_json
from resources.tagger import TaggerResource
from metadata import table_text

ASSETS = [raw_pool, open_tags]


def tag(resources, instance, key, **kwargs):
    return dg.materialize(ASSETS, resources=resources, partition_key=key, instance=instance, selection=[open_tags.key], raise_on_error=False, **kwargs)


def meta(result):
    return result.asset_materializations_for_node("open_tags")[0].metadata


ROWS_A = [{"instruction": f"Write a Python function that sorts list number {i}.", "output": "def f(x): return sorted(x)"} for i in range(6)]
ROWS_B = ROWS_A[:2] + [{"instruction": "Explain photosynthesis in plants.", "output": "Plants turn light into sugar."}]


def test_new_shard_tags_only_its_rows_and_config_change_retags(tmp_path, resources, instance):
    a = ingested_shard(tmp_path, resources, instance, "a.jsonl", ROWS_A)
    first = tag(resources, instance, a)
    assert first.success and meta(first)["computed_now"].value == 6 and meta(first)["reused_from_cache"].value == 0
    table = pl.read_parquet(resources["storage"].asset_file("open_tags", a))
    assert table.height == 6 and set(table["status"]) == {"ok"}
    assert "data:image/png" in meta(first)["tag_frequency"].value and "python" in table_text(meta(first)["top_tags"])

    # Re-materializing tags nothing new.
    assert meta(tag(resources, instance, a))["computed_now"].value == 0
    # Shard B repeats two rows of A: the row cache has their tags (copies across files are resolved by
    # the global steps, whatever order the shards ran in); only the new row is tagged.
    b = ingested_shard(tmp_path, resources, instance, "b.jsonl", ROWS_B)
    second = tag(resources, instance, b)
    assert meta(second)["dagster/row_count"].value == 3 and meta(second)["computed_now"].value == 1 and meta(second)["reused_from_cache"].value == 2

    # A changed tagger configuration is a new version: everything is tagged again under it.
    resources = {**resources, "tagger": TaggerResource(top_n=2)}
    third = tag(resources, instance, a)
    assert meta(third)["computed_now"].value == 6
    assert pl.read_parquet(resources["storage"].asset_file("open_tags", a))["tags"].list.len().max() == 2


def test_failing_endpoint_loses_no_row_and_a_later_run_retags_only_failures(tmp_path, resources, instance):
    key = ingested_shard(tmp_path, resources, instance, "c.jsonl", ROWS_A)
    healthy = {"on": False}

    def reply(body, attempt):
        text = body["messages"][-1]["content"]
        if not healthy["on"] and ("number 1." in text or "number 4." in text):
            return 500, b"boom", 0
        return 200, tags_json("Python", "Sorting"), 0

    with stub_server(reply) as (stub, url):
        http = {**resources, "tagger": TaggerResource(backend="openai", base_url=url, model="stub", backoff_s=0.01, max_retries=1)}
        broken = tag(http, instance, key)
        table = pl.read_parquet(resources["storage"].asset_file("open_tags", key))
        assert broken.success and table.height == 6
        assert table.filter(pl.col("status") == "failed")["error"].to_list() == ["HTTP 500", "HTTP 500"]
        assert meta(broken)["failed_rows"].value == 2 and "HTTP 500" in table_text(meta(broken)["failed_by_reason"])
        healthy["on"] = True
        calls = stub.calls
        fixed = tag(http, instance, key)
        assert meta(fixed)["computed_now"].value == 2 and stub.calls == calls + 2
        assert set(pl.read_parquet(resources["storage"].asset_file("open_tags", key))["status"]) == {"ok"}


def failing_second_call(real, error: Exception):
    """`TaggerResource.tag` that raises `error` on its second call (the second chunk), else `real`."""
    calls = {"n": 0}

    def tag_chunk(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise error
        return real(self, texts)

    return tag_chunk


def test_interrupted_run_resumes_without_redoing_or_duplicating(tmp_path, resources, instance, monkeypatch):
    key = ingested_shard(tmp_path, resources, instance, "d.jsonl", ROWS_A)
    real = TaggerResource.tag
    # not retried by the step's RetryPolicy: the run fails
    monkeypatch.setattr(TaggerResource, "tag", failing_second_call(real, dg.Failure("worker killed", allow_retries=False)))
    crashed = tag(resources, instance, key, run_config={"ops": {"open_tags": {"config": {"chunk_rows": 4}}}})
    assert not crashed.success
    monkeypatch.setattr(TaggerResource, "tag", real)
    resumed = tag(resources, instance, key, run_config={"ops": {"open_tags": {"config": {"chunk_rows": 4}}}})
    assert meta(resumed)["reused_from_cache"].value == 4 and meta(resumed)["computed_now"].value == 2
    table = pl.read_parquet(resources["storage"].asset_file("open_tags", key))
    assert table.height == 6 and table["row_id"].n_unique() == 6


def test_failed_step_is_retried_and_resumes_from_its_cached_chunks(tmp_path, resources, instance, monkeypatch):
    key = ingested_shard(tmp_path, resources, instance, "r.jsonl", ROWS_A)
    monkeypatch.setattr(TaggerResource, "tag", failing_second_call(TaggerResource.tag, RuntimeError("endpoint outage")))
    result = tag(resources, instance, key, run_config={"ops": {"open_tags": {"config": {"chunk_rows": 4}}}})
    assert result.success  # the RetryPolicy ran the step again in the same run
    assert any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)
    assert meta(result)["reused_from_cache"].value == 4 and meta(result)["computed_now"].value == 2


@pytest.mark.parametrize("secret", ["sk-never-log-me"])
def test_api_key_is_not_in_metadata_or_logs(tmp_path, resources, instance, monkeypatch, secret):
    monkeypatch.setenv("TAGGER_KEY", secret)
    key = ingested_shard(tmp_path, resources, instance, "e.jsonl", ROWS_A[:2])
    with stub_server(lambda body, attempt: (200, tags_json("Python"), 0)) as (stub, url):
        http = {**resources, "tagger": TaggerResource(backend="openai", base_url=url, model="stub", api_key_env="TAGGER_KEY")}
        result = tag(http, instance, key)
    assert stub.auth_headers == [f"Bearer {secret}"] * 2
    logs = " ".join(str(e) for e in result.all_events)
    assert secret not in logs and secret not in json.dumps({k: str(v) for k, v in meta(result).items()})
