"""methods/deita.py: DEITA's complexity and quality scores (the reference's generate-based scoring
written out with transformers, against our batched next-token logits; turn pairing; the scores through
the instance_scores asset) and the `deita` strategy."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ingested_shard
from curation_assets.instance_scores import instance_scores
from curation_assets.methods.deita import COMPLEXITY_TEMPLATE, QUALITY_TEMPLATE, expected_scores, turn_pairs
from curation_assets.raw_pool import raw_pool
from resources.scorer import DeitaScorersResource

FIXTURES = Path(__file__).parent / "fixtures"
ROWS = json.loads((FIXTURES / "parity_rows.json").read_text())


def reference_score(model, tokenizer, text: str) -> float:
    """selection/scorer/base.py Scorer.infer_score, as it runs without vLLM."""
    input_ids = tokenizer.encode(text, return_tensors="pt")
    outputs = model.generate(input_ids, max_new_tokens=2, num_return_sequences=1, return_dict_in_generate=True, output_scores=True,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)
    logits = outputs.scores[0][0].detach().cpu().numpy()
    ids = tokenizer.convert_tokens_to_ids(list("123456"))
    picked = np.array([logits[k] for k in ids])
    probs = np.exp(picked - picked.max()) / np.exp(picked - picked.max()).sum()
    return float((probs * np.array([1, 2, 3, 4, 5, 6])).sum())


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_expected_scores_match_the_reference_scorer(name):
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / name)
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / name, dtype=torch.float32).eval()
    rows = [r for r in ROWS if r["output"]][:10]
    prompts = [COMPLEXITY_TEMPLATE.format(instruction=r["instruction"]) for r in rows]
    prompts += [QUALITY_TEMPLATE.format(instruction=r["instruction"], output=r["output"]) for r in rows]
    ours = expected_scores(model, tokenizer, prompts, max_length=4096, token_budget=4096)  # many rows per batch, padded
    for text, value in zip(prompts, ours):
        assert abs(value - reference_score(model, tokenizer, text)) < 1e-5
    assert np.isnan(expected_scores(model, tokenizer, prompts[:1], max_length=5)).all()  # longer than the window


def test_turn_pairs_follow_sharegpt_alternation():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}]
    assert turn_pairs(messages) == [("a", "b"), ("c", "d"), ("e", "")]


def test_asset_scores_every_turn_and_sums_complexity_times_quality(tmp_path, resources, instance):
    scorers = DeitaScorersResource(complexity_model=str(FIXTURES / "tiny_llama"), quality_model=str(FIXTURES / "tiny_gpt2"))
    resources = {**resources, "deita_scorers": scorers}
    multi = {"conversations": [{"from": "human", "value": "Hi there."}, {"from": "gpt", "value": "Hello!"},
                               {"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "Seven."}]}
    key = ingested_shard(tmp_path, resources, instance, "d.jsonl", [{"instruction": r["instruction"], "output": r["output"]} for r in ROWS[:5]] + [multi])
    import dagster as dg

    result = dg.materialize([raw_pool, instance_scores], resources=resources, partition_key=key, instance=instance, selection=[instance_scores.key],
                            run_config={"ops": {"instance_scores": {"config": {"methods": ["deita"]}}}})
    assert result.success
    table = pl.read_parquet(resources["storage"].asset_file("instance_scores", key))
    assert table["deita_complexity"].list.len().to_list() == [1] * 5 + [2]
    for c, q, s in table.select("deita_complexity", "deita_quality", "deita_score").iter_rows():
        assert all(1 <= x <= 6 for x in c + q) and abs(s - sum(a * b for a, b in zip(c, q))) < 1e-9
    # The multi-turn row's second turn is scored on its own exchange.
    tok, model = scorers.scorer("quality").load()
    last = expected_scores(model, tok, [QUALITY_TEMPLATE.format(instruction="Name a prime.", output="Seven.")], max_length=1024)
    assert abs(table["deita_quality"][-1][1] - last[0]) < 1e-6
    meta = result.asset_materializations_for_node("instance_scores")[0].metadata
    assert "data:image/png" in meta["deita_score_histogram"].value


def test_strategy_rejects_rows_too_close_to_a_kept_one_and_says_which():
    from curation_assets.methods.deita import DeitaStrategySettings, pick
    from curation_assets.methods.plugin import Budget, Candidates

    # b is at cosine 0.99 to a (kept first, best score); c is orthogonal to both; d has no score.
    emb = np.array([[1.0, 0.0], [0.99, np.sqrt(1 - 0.99**2)], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    c = Candidates(pl.DataFrame({"row_id": list("abcd"), "instruction": ["q"] * 4, "input": [""] * 4, "response": ["r"] * 4, "deita_score": [3.0, 2.0, 1.0, None]}), embed=lambda texts: emb)
    picked = pick(c, Budget(3, 3, 4), DeitaStrategySettings())
    assert picked.order == [0, 2] and picked.gain[0] == 3.0 and picked.gain_name == "score (deita_score)"
    assert picked.reason[1] == "cosine 0.990 > 0.9 to the already selected a" and picked.reason[3] == "no score"
    assert picked.ineligible == {1, 3}
    with pytest.raises(ValueError, match="embedder"):
        pick(Candidates(c.rows), Budget(1, 1, 4), DeitaStrategySettings())
