"""methods/token_losses.py: per-token cross-entropy of many sequences in length-sorted batches, on a
tiny random model, against a plain full forward pass computed here."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import curation_assets.methods.token_losses as engine
from curation_assets.methods.ifd import Sample, plain_ifd
from curation_assets.methods.token_losses import LossRequest, added_pad_row, batches_by_budget, mean_or_nan, next_token_logits, token_losses
from resources.scorer import CausalLMScorerResource

FIXTURES = Path(__file__).parent / "fixtures"
SEQUENCES = [[5, 17, 3, 99, 42, 7], [8, 1], [60, 61, 62, 63, 64, 65, 66, 67, 68], [4, 4, 4]]


@pytest.fixture(scope="module")
def model():
    return CausalLMScorerResource(model=str(FIXTURES / "tiny_gpt2")).load()[1]


def full_forward_losses(model, ids: list[int]) -> np.ndarray:
    """CE(logits[p - 1], ids[p]) for every p >= 1, one sequence alone, no padding."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none").numpy()


def test_span_losses_equal_a_plain_forward_pass_whatever_the_batching(model):
    requests = [LossRequest(SEQUENCES[0], 2, 5), LossRequest(SEQUENCES[1], 0, 2), LossRequest(SEQUENCES[2], 1, 99), LossRequest(SEQUENCES[3], 3, 3)]
    for budget in (8, 4096):  # one row per batch, or all in one padded batch
        got = token_losses(model, requests, token_budget=budget)
        full = [full_forward_losses(model, s) for s in SEQUENCES]
        np.testing.assert_allclose(got[0], full[0][1:4], atol=1e-5)  # positions 2, 3, 4
        np.testing.assert_allclose(got[1], full[1][0:1], atol=1e-5)  # position 0 is never scored
        np.testing.assert_allclose(got[2], full[2], atol=1e-5)  # the span is cut at the sequence's end
        assert got[3].shape == (0,) and all(g.dtype == np.float32 for g in got)


def test_next_token_logits_are_the_last_positions_logits(model):
    wanted = [3, 10, 200]
    got = next_token_logits(model, SEQUENCES, wanted, token_budget=16)
    for row, ids in zip(got, SEQUENCES):
        with torch.no_grad():
            last = model(input_ids=torch.tensor([ids])).logits[0, -1].float().numpy()
        np.testing.assert_allclose(row, last[wanted], atol=1e-5)
    assert next_token_logits(model, [], wanted).shape == (0, 3)


def test_an_added_pad_row_scores_under_a_vocabulary_one_larger(model):
    vocab = model.get_output_embeddings().weight.shape[0]
    keep, row, bias = added_pad_row(model, vocab)
    assert keep == vocab and torch.allclose(row[0], model.get_output_embeddings().weight.mean(dim=0))
    ids = SEQUENCES[2]
    got = token_losses(model, [LossRequest(ids, 1, len(ids))], extra_row=(keep, row, bias))[0]
    with torch.no_grad():
        hidden = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, :-1]
        logits = torch.cat([model.get_output_embeddings()(hidden), hidden @ row.T + (bias if bias is not None else 0)], dim=1).float()
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none").numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got > full_forward_losses(model, ids)).all()  # one more token shares the probability mass
    with pytest.raises(ValueError, match="fewer than"):
        added_pad_row(model, vocab + 1)


def test_batches_by_budget_and_mean_or_nan():
    assert batches_by_budget([3, 10, 4, 9], token_budget=20, max_rows=8) == [[1, 3], [2, 0]]
    assert batches_by_budget([3, 10, 4, 9], token_budget=1000, max_rows=3) == [[1, 3, 2], [0]]
    assert mean_or_nan(np.array([1.0, 2.0], dtype=np.float32)) == 1.5 and np.isnan(mean_or_nan(np.zeros(0, dtype=np.float32)))


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
