"""instance_scores.py: the scorer resource, the instance_scores asset (incremental, versioned,
explained) and the comparative_scores asset with a judge served on localhost."""

import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from conftest import ingested_shard, land
from curation_assets.instance_scores import JudgeResource, comparative_scores, instance_scores
from curation_assets.methods.comparative import cluster_members
from curation_assets.normalized_tags import normalized_tags
from curation_assets.open_tags import open_tags
from curation_assets.raw_pool import raw_pool
from openai_stub import stub_server
from resources.models import ModelNotAvailableError
from resources.scorer import CausalLMScorerResource
from metadata import table_text

FIXTURES = Path(__file__).parent / "fixtures"


def test_missing_model_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download"):
        CausalLMScorerResource(model="some-org/not-a-cached-model").load()


def score(resources, instance, key, config=None):
    result = dg.materialize([raw_pool, instance_scores], resources=resources, partition_key=key, instance=instance, selection=[instance_scores.key],
                            run_config={"ops": {"instance_scores": {"config": config or {}}}})
    assert result.success
    return result.asset_materializations_for_node("instance_scores")[0].metadata


ROWS = json.loads((FIXTURES / "parity_rows.json").read_text())


def test_asset_scores_incrementally_and_per_method_version(tmp_path, resources, instance):
    resources = {**resources, "scorer": CausalLMScorerResource(model=str(FIXTURES / "tiny_gpt2"))}
    rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in ROWS[:10]]
    multi = {"conversations": [{"from": "human", "value": "Hi there."}, {"from": "gpt", "value": "Hello!"},
                               {"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "Seven."}]}
    a = ingested_shard(tmp_path, resources, instance, "a.jsonl", rows + [multi])
    config = {"methods": ["ifd", "tshirt", "cherry"], "tshirt_copies": 4}
    meta = score(resources, instance, a, config)
    table = pl.read_parquet(resources["storage"].asset_file("instance_scores", a))
    assert table.height == 11 and {"ifd_ppl", "tshirt_ifd", "avg_noisy_ifd", "noisy_d", "ifd_loss", "cherry_skip"} <= set(table.columns)
    assert table["noisy_ifd"].list.len().max() == 4
    assert np.isfinite(table["ifd_ppl"][-1])  # the multi-turn row is scored on its last exchange
    assert "data:image/png" in meta["ifd_ppl_histogram"].value and "highest_ifd_below_1" in meta
    assert "ifd" in table_text(meta["cache"]) and meta["scorer"].value["weights"]

    # A second shard with two rows of the first: only its new row is scored.
    b = ingested_shard(tmp_path, resources, instance, "b.jsonl", rows[:2] + [{"instruction": "Name a color.", "output": "Teal."}])
    meta_b = score(resources, instance, b, config)
    # Its copies of shard a's rows are canonical within b (shards.py decides across files): reused from the cache.
    assert "| ifd | 2 | 1 |" in table_text(meta_b["cache"]) and "| tshirt | 2 | 1 |" in table_text(meta_b["cache"])

    # Changing T-SHIRT's settings re-scores T-SHIRT only.
    meta = score(resources, instance, a, {**config, "tshirt_copies": 3})
    cache = table_text(meta["cache"])
    assert "| ifd | 11 | 0 |" in cache and "| tshirt | 0 | 11 |" in cache and "| cherry | 11 | 0 |" in cache


def test_changed_model_makes_scores_stale(tmp_path, resources, instance):
    key = ingested_shard(tmp_path, resources, instance, "c.jsonl", [{"instruction": r["instruction"], "output": r["output"]} for r in ROWS[:4]])
    gpt2 = {**resources, "scorer": CausalLMScorerResource(model=str(FIXTURES / "tiny_gpt2"))}
    llama = {**resources, "scorer": CausalLMScorerResource(model=str(FIXTURES / "tiny_llama"))}
    assert "| ifd | 0 | 4 |" in table_text(score(gpt2, instance, key, {"methods": ["ifd"]})["cache"])
    assert "| ifd | 0 | 4 |" in table_text(score(llama, instance, key, {"methods": ["ifd"]})["cache"])
    assert "| ifd | 4 | 0 |" in table_text(score(gpt2, instance, key, {"methods": ["ifd"]})["cache"])


def test_iterit_template_setting(tmp_path):
    from curation_assets.methods.ifd import LLAMA31_TEMPLATE
    from curation_assets.methods.iterit import IterITSettings, chat_template

    assert chat_template(IterITSettings()) is None  # the scorer's own
    assert chat_template(IterITSettings(iterit_chat_template="llama-3.1")) == LLAMA31_TEMPLATE
    custom = tmp_path / "chat.jinja"
    custom.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert chat_template(IterITSettings(iterit_chat_template=str(custom))) == custom.read_text()
    with pytest.raises(ValueError, match="neither"):
        chat_template(IterITSettings(iterit_chat_template="llama-9"))


# --------------------------------------------------------------------------- comparative_scores (TACOS's judge)


def test_asset_scores_pairs_within_clusters_with_a_local_judge(tmp_path, resources, instance):
    rows = [{"instruction": f"Write a Python function number {i} that sorts a list.", "output": "x" * (10 + i)} for i in range(5)]
    rows += [{"instruction": f"Explain photosynthesis in plants, part {i}.", "output": "y" * (5 + i)} for i in range(4)]
    for row in rows[:5]:
        row["input"] = "[1, 3, 2]"
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = land(resources, path)
    instance.add_dynamic_partitions("pool_shards", [key])
    assets = [raw_pool, open_tags, normalized_tags, comparative_scores]
    config = {"ops": {"normalized_tags": {"config": {"alpha": 1, "n_clusters": 2, "merge_threshold": None}}}}
    assert dg.materialize(assets[:2], resources=resources, partition_key=key, instance=instance).success

    seen = []

    def reply(body, attempt):
        user = body["messages"][-1]["content"]
        seen.append(body["messages"])
        lengths = [len(x) for x in re.findall(r"\[Response \d\]\n([xy]+)", user)]
        if "part 2" in user and attempt == 0:
            return 200, "Both are fine.", 0  # no scores: re-asked
        return 200, f"Analysis.\n[Response 1]: {min(100, 50 + lengths[0])}\n[Response 2]: {min(100, 50 + lengths[1])}", 0

    with stub_server(reply) as (stub, url):
        judged = {**resources, "judge": JudgeResource(enabled=True, base_url=url, model="stub", backoff_s=0.01)}
        result = dg.materialize(assets, resources=judged, instance=instance, selection=["normalized_tags", "tag_vocabulary", "comparative_scores"], run_config=config)
        assert result.success
        table = pl.read_parquet(resources["storage"].asset_file("comparative_scores"))
        calls = stub.calls
        # The same pairs are not judged twice.
        again = dg.materialize(assets, resources=judged, instance=instance, selection=[comparative_scores.key])
        assert again.success and stub.calls == calls
    assert table.height > 0 and table["score"].null_count() == 0 and table["partner_score"].null_count() == 0
    # The AlpaGasus system message, and Alpaca's input right after the instruction (api_score_pairs.py).
    assert {m[0]["content"] for m in seen} == {"You are a helpful and precise assistant for checking the quality of the answer."}
    assert any(re.search(r"that sorts a list\.\[1, 3, 2\]\n", m[-1]["content"]) for m in seen)
    assert table.filter(pl.col("score") == 0).is_empty()
    scored_rows = set(table["row_id"])
    tags = pl.read_parquet(resources["storage"].asset_file("normalized_tags"))
    reps = set(tags.filter(pl.col("labelset_representative"))["row_id"])
    assert scored_rows <= reps
    meta = result.asset_materializations_for_node("comparative_scores")[0].metadata
    assert meta["failed_judgements"].value == 0 and "data:image/png" in meta["score_histogram"].value


def tagged_pairs_pool(tmp_path, resources, instance) -> str:
    """A landed, tagged shard of two topics (5 sorting functions, x-responses of 10-14 chars; 4
    photosynthesis parts, y-responses of 5-8 chars); returns its partition key."""
    rows = [{"instruction": f"Write a Python function number {i} that sorts a list.", "output": "x" * (10 + i)} for i in range(5)]
    rows += [{"instruction": f"Explain photosynthesis in plants, part {i}.", "output": "y" * (5 + i)} for i in range(4)]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = land(resources, path)
    instance.add_dynamic_partitions("pool_shards", [key])
    assert dg.materialize([raw_pool, open_tags], resources=resources, partition_key=key, instance=instance).success
    return key


def test_a_judge_without_score_lines_is_continued_from_them(tmp_path, resources, instance):
    """score_prefill: answers without the two lines are continued from "[Response 1]:" and then
    "[Response 2]:"; a pair whose continuation holds no number keeps both errors. Each pair is judged
    in both orders and the stub writes the second number only when the longer response comes first."""
    key = tagged_pairs_pool(tmp_path, resources, instance)
    assets = [raw_pool, open_tags, normalized_tags, comparative_scores]
    prefills = []

    def reply(body, attempt):
        last = body["messages"][-1]
        if last["role"] != "assistant":
            return 200, "The two items are about related topics. " * 3, 0
        prefills.append(last["content"])
        first, second = [len(x) for x in re.findall(r"\[Response \d\]\n([xy]+)", body["messages"][1]["content"])]
        if last["content"].endswith("[Response 1]:"):
            return 200, f" {first} out of 100", 0
        return 200, (f" {second}" if first > second else " not sure"), 0

    config = {"ops": {"normalized_tags": {"config": {"alpha": 1, "n_clusters": 2, "merge_threshold": None}}, "comparative_scores": {"config": {"both_orders": True}}}}
    with stub_server(reply) as (stub, url):
        judged = {**resources, "judge": JudgeResource(enabled=True, base_url=url, model="stub", backoff_s=0.01, max_retries=0, score_prefill=True)}
        assert dg.materialize(assets, resources=judged, instance=instance, selection=["normalized_tags", "tag_vocabulary", "comparative_scores"], run_config=config).success
        pairs = stub.calls - len(prefills)
    table = pl.read_parquet(resources["storage"].asset_file("comparative_scores"))
    lengths = {r: len(o) for r, o in pl.read_parquet(resources["storage"].asset_file("raw_pool", key)).select("row_id", "response").iter_rows()}
    scored, failed = table.filter(pl.col("score").is_not_null()), table.filter(pl.col("score").is_null())
    assert scored.height and failed.height and pairs > 0
    # The numbers written after each prefilled line are the scores: here, each response's length.
    assert all(score == lengths[row] for row, score in scored.select("row_id", "score").iter_rows()) and scored["error"].null_count() == scored.height
    assert failed["error"].str.contains("no '\\[Response 1\\]: score'.*; prefill: unparseable answer: no 0-100 score").all()
    # Per pair: one continuation for the first score, then one for the second.
    assert len(prefills) == 2 * pairs and all(p.startswith("The two items") for p in prefills)
    assert {p.rsplit("\n", 1)[-1] for p in prefills} == {"[Response 1]:", "[Response 2]:"}


def test_asset_with_the_reference_parser(tmp_path, resources, instance):
    tagged_pairs_pool(tmp_path, resources, instance)
    assets = [raw_pool, open_tags, normalized_tags, comparative_scores]

    def reply(body, attempt):
        user = body["messages"][-1]["content"]
        return 200, ("I like both." if "part 1" in user else "[Response 1] Score: 150\n[Response 2] Score: 70"), 0

    config = {"ops": {"normalized_tags": {"config": {"alpha": 1, "n_clusters": 2, "merge_threshold": None}}, "comparative_scores": {"config": {"parser": "reference"}}}}
    with stub_server(reply) as (stub, url):
        judged = {**resources, "judge": JudgeResource(enabled=True, base_url=url, model="stub", backoff_s=0.01)}
        result = dg.materialize(assets, resources=judged, instance=instance, selection=["normalized_tags", "tag_vocabulary", "comparative_scores"], run_config=config)
        assert result.success
    table = pl.read_parquet(resources["storage"].asset_file("comparative_scores"))
    tags = pl.read_parquet(resources["storage"].asset_file("normalized_tags"))
    members = cluster_members(tags.filter(pl.col("labelset_representative")).sort("labelset_first_seen").select("row_id", "clusters_in_tag_order").iter_rows())
    # Consecutive pairs only, an odd cluster's last item dropped; one call per pair, none re-asked.
    assert table.height == sum(len(m) // 2 * 2 for m in members.values()) == 2 * stub.calls
    assert set(table["score"].to_list()) <= {150.0, 70.0, 0.0} and table["error"].null_count() == table.height
    assert 150.0 in table["score"].to_list()


def test_disabled_judge_gives_an_empty_table(tmp_path, resources, instance):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    key = land(resources, path)
    instance.add_dynamic_partitions("pool_shards", [key])
    assets = [raw_pool, open_tags, normalized_tags, comparative_scores]
    assert dg.materialize(assets[:2], resources=resources, partition_key=key, instance=instance).success
    result = dg.materialize(assets, resources=resources, instance=instance, selection=["normalized_tags", "tag_vocabulary", "comparative_scores"],
                            run_config={"ops": {"normalized_tags": {"config": {"alpha": 1}}}})
    assert result.success and pl.read_parquet(resources["storage"].asset_file("comparative_scores")).is_empty()
