"""The scorer resource and the instance_scores asset (incremental, versioned, explained)."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch

import curation_assets.methods.token_losses as engine
from conftest import ingested_shard
from curation_assets.instance_scores import instance_scores
from curation_assets.methods.ifd import Sample, plain_ifd
from curation_assets.raw_pool import raw_pool
from resources.models import ModelNotAvailableError
from resources.scorer import CausalLMScorerResource
from metadata import table_text

FIXTURES = Path(__file__).parent / "fixtures"


def test_out_of_memory_batches_are_split(monkeypatch):
    scorer = CausalLMScorerResource(model=str(FIXTURES / "tiny_gpt2"))
    tokenizer, model = scorer.load()
    samples = [Sample(r["instruction"], r["input"], r["output"]) for r in json.loads((FIXTURES / "parity_rows.json").read_text())[:12]]
    expected = plain_ifd(model, tokenizer, samples)
    real = engine._forward_batch
    sizes = []

    def small_gpu(model, requests, *args):
        sizes.append(len(requests))
        if len(requests) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, requests, *args)

    monkeypatch.setattr(engine, "_forward_batch", small_gpu)
    got = plain_ifd(model, tokenizer, samples, token_budget=1 << 20)
    assert sizes[0] == 24 and sum(s for s in sizes if s <= 3) == 24  # every request ran once, in smaller batches
    for a, b in zip(got, expected):
        assert (np.isnan(a.ifd_ppl) and np.isnan(b.ifd_ppl)) or abs(a.ifd_ppl - b.ifd_ppl) < 1e-6


def test_batches_respect_the_token_budget():
    lengths = [5, 50, 7, 48, 6, 49, 100]
    batches = engine.batches_by_budget(lengths, token_budget=120, max_rows=8)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(max(lengths[i] for i in b) * len(b) <= 120 or len(b) == 1 for b in batches)
    assert batches[0] == [6]  # longest first


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
