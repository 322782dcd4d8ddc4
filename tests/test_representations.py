"""RDS+ and BM25 representations on tiny inputs (research/targeted.md §3.3, §3.5)."""

import math
from pathlib import Path

import numpy as np
import torch

from curation_assets.methods import representations as rep
from curation_assets.methods.lora_training import encode_conversation, encode_prompt_completion

TINY = Path(__file__).parent / "fixtures" / "tiny_llama"


def test_rds_batched_equals_the_reference_batch_size_one():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY)
    model = AutoModelForCausalLM.from_pretrained(TINY).eval()
    rows = [encode_conversation(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 2048)
            for q, a in [("Hi there", "Hello!"), ("Sum 2 and 3, please, and explain the steps.", "2 + 3 = 5 because we count on."), ("x", "y")]]
    rows.append(encode_prompt_completion(tok, "<|user|>\nQ: 1+1?\n<|assistant|>\nA:", " 2", 2048))
    ours = rep.rds_embeddings(model, rows, pad_id=tok.eos_token_id, max_tokens=10_000)
    for i, r in enumerate(rows):  # compute_rds_embeddings at batch size 1: weights over every position
        with torch.no_grad():
            h = model(input_ids=torch.tensor([r.input_ids]), output_hidden_states=True).hidden_states[-1]
        w = torch.arange(h.size(1)).unsqueeze(0) + 1
        w = w / w.sum(dim=1, keepdim=True)
        ref = torch.nn.functional.normalize((h * w.unsqueeze(-1)).sum(dim=1), p=2, dim=1)[0].numpy()
        np.testing.assert_allclose(ours[i], ref, atol=2e-5)


def test_bm25_scores_are_okapi_normalized_per_query():
    docs = ["the cat sat on the mat", "dogs chase cats", "a bird sings", "the cat and the dog"]
    queries = ["cat on mat", "bird"]
    sim = rep.BM25Similarity(docs, queries)
    tokens = rep.bm25_tokens(docs)
    avgdl = np.mean([len(d) for d in tokens])

    def okapi(query, doc):  # Lucene idf log(1 + (N - df + .5)/(df + .5)), k1 = 1.5, b = 0.75
        total = 0.0
        for term in query.lower().split():
            df = sum(term in d for d in tokens)
            if not df:
                continue
            idf = math.log(1 + (len(tokens) - df + 0.5) / (df + 0.5))
            tf = doc.count(term)
            total += idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * len(doc) / avgdl))
        return total

    raw = np.array([[okapi(q, d) for d in tokens] for q in queries])
    expected = (raw - raw.min(axis=1, keepdims=True)) / (raw.max(axis=1, keepdims=True) - raw.min(axis=1, keepdims=True))
    np.testing.assert_allclose(sim.dense(), expected, rtol=1e-5, atol=1e-6)
    scores, ids = sim.top(np.array([0, 1]), 2)
    assert ids[0, 0] == 0 and ids[1, 0] == 2 and scores[1, 0] == 1.0
    best = sim.column_best()
    assert best.query.tolist() == [0, 0, 1, 0]


def test_embed_texts_follow_tis():
    assert rep.embed_query_text("P", "L") == "Instruct: Given a sample, find the passages closest to that sample.\nQuery: P L"
    text = rep.embed_candidate_text([{"role": "user", "content": " q "}, {"role": "assistant", "content": "a"}], "</s>")
    assert text == "<|user|>\nq\n<|assistant|>\na</s>"
