"""The non-gradient representations of targeted selection (research/targeted.md §3.3-3.5): RDS+
(weighted-mean last hidden state of the base model), an off-the-shelf sentence embedder, BM25.

Each gives unit feature rows (RDS+, embedder), so cosine = inner product and faiss serves the
search, or a similarity source of its own (BM25: `BM25Similarity`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from curation_assets.methods.less_features import length_batches
from curation_assets.methods.lora_training import Encoded, tulu_text

VERSION = "repr-1"
EMBED_QUERY_INSTRUCTION = "Instruct: Given a sample, find the passages closest to that sample.\nQuery: "


def rds_embeddings(model, rows: Sequence[Encoded], *, pad_id: int, max_tokens: int = 8192, max_rows: int = 64) -> np.ndarray:
    """RDS+ (TIS compute_rds_embeds.py, pooling weighted_mean): the final layer's hidden states
    pooled with weights (t+1)/sum(1..T) over a row's T tokens, then L2-normalized. Batched with
    right padding: the weights run over real tokens only (the notes' PROPOSAL), which reproduces the
    reference's batch-size-1 result."""
    out = np.empty((len(rows), model.config.hidden_size), dtype=np.float32)
    device = next(model.parameters()).device
    model.eval()
    for batch in length_batches([len(r.input_ids) for r in rows], max_tokens, max_rows):
        width = max(len(rows[i].input_ids) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, i in enumerate(batch):
            ids[b, : len(rows[i].input_ids)] = torch.tensor(rows[i].input_ids)
            mask[b, : len(rows[i].input_ids)] = 1
        with torch.inference_mode():
            hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states[-1].float()
        weights = torch.arange(1, width + 1, device=device, dtype=torch.float32)[None, :] * mask.to(device)
        weights = weights / weights.sum(dim=1, keepdim=True)
        pooled = (hidden * weights[..., None]).sum(dim=1)
        out[batch] = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
    return out


def embed_candidate_text(messages: Sequence[dict], eos: str = "") -> str:
    """EMBED's candidate text: the tulu-format conversation with the encoder tokenizer's EOS."""
    return tulu_text(messages, eos).strip()


def embed_query_text(prompt: str, answer: str) -> str:
    """EMBED's query text (TIS compute_sentence_embeds.py)."""
    return f"{EMBED_QUERY_INSTRUCTION}{prompt} {answer}"


def bm25_tokens(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased whitespace tokens (the notes' PROPOSAL for BM25)."""
    return [t.lower().split() for t in texts]


class BM25Similarity:
    """BM25 scores (bm25s; Okapi BM25 with Lucene's non-negative idf by default) of each query against the candidate texts, each query's
    row min-max normalized to [0, 1] (the notes' PROPOSAL, so that RR, UOT and KNN see comparable
    scales). One query's N scores at a time: no M x N matrix unless `dense()` is asked for."""

    def __init__(self, candidate_texts: Sequence[str], query_texts: Sequence[str], *, method: str = "lucene", k1: float = 1.5, b: float = 0.75):
        import bm25s

        if not candidate_texts or not query_texts:
            raise ValueError("BM25 needs candidate and query texts")
        self.retriever = bm25s.BM25(method=method, k1=k1, b=b)
        self.retriever.index(bm25_tokens(candidate_texts), show_progress=False)
        self.queries = bm25_tokens(query_texts)
        self.n_queries, self.n_candidates = len(self.queries), len(candidate_texts)
        self._best = None

    def row(self, i: int) -> np.ndarray:
        scores = np.asarray(self.retriever.get_scores(self.queries[i]), dtype=np.float64)
        lo, hi = scores.min(), scores.max()
        return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)

    def top(self, queries: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        length = min(length, self.n_candidates)
        scores, ids = [], []
        for i in queries:
            s = self.row(int(i))
            order = np.argsort(-s, kind="stable")[:length]
            scores.append(s[order])
            ids.append(order)
        return np.array(scores), np.array(ids, dtype=np.int64)

    def column_best(self):
        from curation_assets.methods.similarity_search import ColumnBest

        if self._best is None:
            value = np.full(self.n_candidates, -np.inf)
            query = np.zeros(self.n_candidates, dtype=np.int64)
            for i in range(self.n_queries):
                s = self.row(i)
                better = s > value  # strictly: the lowest query index keeps a tie
                value[better], query[better] = s[better], i
            self._best = ColumnBest(value, query)
        return self._best

    def dense(self) -> np.ndarray:
        return np.stack([self.row(i) for i in range(self.n_queries)])
