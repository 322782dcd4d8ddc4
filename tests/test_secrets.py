"""API keys come from the environment only and appear nowhere we store: an endpoint that echoes the
key in its error bodies (and in its answers) leaves no trace of it in open_tags' table, metadata,
logs, the row cache or the Dagster instance's storage."""

import json

import dagster as dg
import polars as pl
import pytest

from conftest import ingested_shard
from curation_assets.open_tags import open_tags
from curation_assets.raw_pool import raw_pool
from openai_stub import stub_server, tags_json
from resources.llm import REDACTED, ChatModelResource
from resources.tagger import TaggerResource

SECRET = "sk-test-0123456789-echo-me"
ROWS = [{"instruction": f"Explain topic number {i} in one line.", "output": "It is explained."} for i in range(5)]


def echoing_endpoint(body, attempt):
    """Each row gets a different way of leaking the key the client sent."""
    text = body["messages"][-1]["content"]
    leak = f"invalid api key {SECRET} for this org"
    if "number 0 " in text:
        return 401, json.dumps({"error": {"message": leak}}).encode(), 0
    if "number 1 " in text:
        return 500, leak.encode(), 0
    if "number 2 " in text:
        return 200, f"I cannot tag this. Your key is {SECRET}.", 0  # unparseable answer quoting the key
    if "number 3 " in text:
        return 200, tags_json("python", SECRET), 0  # a parsed tag holding the key
    return 200, tags_json("python"), 0


def stored_files_mentioning(root, secret: str) -> list[str]:
    """Files under `root` whose bytes, or whose Parquet cells once decompressed, hold `secret`."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if secret.encode() in path.read_bytes():
            found.append(str(path))
        elif path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            if any(secret in json.dumps(row, default=str) for row in frame.to_dicts()):
                found.append(str(path))
    return found


def test_echoed_api_key_is_stored_nowhere(tmp_path, resources, monkeypatch, capfd):
    monkeypatch.setenv("CURATION_TEST_KEY", SECRET)
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        key = ingested_shard(tmp_path, resources, instance, "pool.jsonl", ROWS)
        with stub_server(echoing_endpoint) as (stub, url):
            tagger = TaggerResource(backend="openai", base_url=url, model="stub", api_key_env="CURATION_TEST_KEY", backoff_s=0.01, max_retries=1)
            result = dg.materialize(
                [raw_pool, open_tags], resources={**resources, "tagger": tagger}, partition_key=key, instance=instance, selection=[open_tags.key]
            )
        assert result.success
        assert set(stub.auth_headers) == {f"Bearer {SECRET}"}  # the key was sent, so it could be echoed

        table = pl.read_parquet(resources["storage"].asset_file("open_tags", key)).sort("row_id")
        errors = [e for e in table["error"].to_list() if e]
        assert len(errors) == 3
        assert [e for e in errors if e.startswith("HTTP 401")] == ['HTTP 401: {"error": {"message": "invalid api key [REDACTED] for this org"}}']
        assert REDACTED in json.dumps(table["tags"].to_list())  # the tag that quoted the key
        assert SECRET not in json.dumps(table.to_dicts(), default=str)

        materialization = result.asset_materializations_for_node("open_tags")[0]
        assert SECRET not in json.dumps({k: str(v) for k, v in materialization.metadata.items()})
        events = instance.all_logs(result.run_id)
        assert events and not any(SECRET in str(e) for e in events)
        out, err = capfd.readouterr()
        assert SECRET not in out + err

    # Everything we store: asset tables, row caches, landed files, the instance's run/event index.
    assert stored_files_mentioning(tmp_path, SECRET) == []


def test_error_escaping_the_client_is_redacted(monkeypatch):
    monkeypatch.setenv("CURATION_TEST_KEY", SECRET)

    def parse(text):
        raise KeyError(f"parser crashed on {text}")  # not a ParseError: escapes the client

    with stub_server(lambda body, attempt: (200, f"the key is {SECRET}", 0)) as (_, url):
        model = ChatModelResource(base_url=url, model="stub", api_key_env="CURATION_TEST_KEY", max_retries=0)
        with pytest.raises(RuntimeError) as err:
            model.generate([[{"role": "user", "content": "hi"}]], parse)
    assert SECRET not in str(err.value) and REDACTED in str(err.value) and err.value.__cause__ is None


def test_no_resource_takes_a_key_in_config():
    from curation_assets.definitions import RESOURCE_TYPES

    for name, cls in RESOURCE_TYPES.items():
        fields = {f.lower() for f in cls.model_fields}
        assert not any(f in ("api_key", "key", "token", "password", "secret") for f in fields), name
