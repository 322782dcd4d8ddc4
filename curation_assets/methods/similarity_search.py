"""Query x candidate similarity without a dense pool x query matrix (research/targeted.md §4.1, §11).

Targeted selection reads S (queries x candidates, larger = more similar) only through two views:
each query's best candidates in (-score, candidate index) order, and each candidate's best query.
`DenseSimilarity` serves both from a given matrix (the reference functions' input, and small
pools); `FaissSimilarity` serves them from feature vectors with faiss, reading the pool in chunks,
so a pool of millions never needs an M x N matrix in memory.

Tie rule: both return each query's list in (-score, index) order, complete at its end: a group of
equal scores that the cut at L would split is fetched whole first (faiss does not define the order
of equal hits), so the lowest index wins ties exactly as the reference's np.argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

PoolChunks = Callable[[], Iterator[tuple[int, np.ndarray]]]  # yields (first row position, float32 block)


def _sorted_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row re-sorted by (-score, id); -inf padding (faiss's missing hits, id -1) goes last."""
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_ids, -scores.astype(np.float64)), axis=1) if scores.size else np.zeros(scores.shape, dtype=np.int64)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


@dataclass
class ColumnBest:
    """Per candidate: its most similar query (lowest query index among ties) and that similarity."""

    value: np.ndarray  # (N,) float
    query: np.ndarray  # (N,) int64


class DenseSimilarity:
    """S given as an array (rows = queries)."""

    def __init__(self, s: np.ndarray):
        s = np.asarray(s)
        if s.ndim != 2:
            raise ValueError(f"the similarity matrix must be 2-D (queries x candidates), got shape {s.shape}")
        if not np.isfinite(s).all():
            # research/targeted.md §4.1: np.argmax picks NaN first and re-picks column 0 on an all -inf row
            raise ValueError("the similarity matrix holds NaN or infinite values")
        self.s = s
        self.n_queries, self.n_candidates = s.shape
        self._order: np.ndarray | None = None

    def row_order(self) -> np.ndarray:
        if self._order is None:
            # a stable sort of -S keeps the lowest index first among ties
            self._order = np.argsort(-self.s, axis=1, kind="stable")
        return self._order

    def top(self, queries: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.row_order()[queries, : min(length, self.n_candidates)]
        return np.take_along_axis(self.s[queries], ids, axis=1), ids

    def column_best(self) -> ColumnBest:
        query = np.argmax(self.s, axis=0)
        return ColumnBest(self.s[query, np.arange(self.n_candidates)], query.astype(np.int64))

    def dense(self) -> np.ndarray:
        return self.s


class FaissSimilarity:
    """S = queries @ poolᵀ (inner products of the given feature rows), computed by faiss in pool chunks.

    `pool_chunks()` yields (offset, float32 block) pairs covering rows 0..n_candidates-1 in order;
    the pool may live in memory-mapped shard files. Memory: one chunk plus M x L results.
    """

    def __init__(self, queries: np.ndarray, pool_chunks: PoolChunks, n_candidates: int, *, use_gpu: bool | None = None):
        import faiss

        self.faiss = faiss
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not np.isfinite(self.queries).all():
            raise ValueError("query features hold NaN or infinite values")
        self.pool_chunks = pool_chunks
        self.n_queries, self.n_candidates = self.queries.shape[0], n_candidates
        self.use_gpu = (faiss.get_num_gpus() > 0) if use_gpu is None else use_gpu
        self._best: ColumnBest | None = None
        self._lists: tuple[np.ndarray, np.ndarray] | None = None

    def _index(self, block: np.ndarray):
        index = self.faiss.IndexFlatIP(block.shape[1])
        if self.use_gpu:
            index = self.faiss.index_cpu_to_all_gpus(index)
        index.add(np.ascontiguousarray(block, dtype=np.float32))
        return index

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        heap = self.faiss.ResultHeap(len(queries), k, keep_max=True)
        for offset, block in self.pool_chunks():
            if not np.isfinite(block).all():
                raise ValueError(f"candidate features hold NaN or infinite values (rows {offset}..{offset + len(block) - 1})")
            scores, ids = self._index(block).search(queries, min(k, len(block)))
            if scores.shape[1] < k:  # a short last chunk: pad to the heap's width
                pad = k - scores.shape[1]
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
                ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(np.where(ids >= 0, ids + offset, -1), dtype=np.int64))
        heap.finalize()
        return _sorted_rows(heap.D, heap.I)

    def top(self, queries: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        length = min(length, self.n_candidates)
        if self._lists is not None and self._lists[0].shape[1] >= length:  # a prefix of a complete longer list is complete
            return self._lists[0][queries, :length], self._lists[1][queries, :length]
        scores, ids = self._top(queries, length)
        if len(queries) == self.n_queries and np.array_equal(queries, np.arange(self.n_queries)):
            self._lists = (scores, ids)  # every query's list, reused by later, shorter requests
        return scores, ids

    def _top(self, queries: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        q = self.queries[queries]
        fetch = min(length + 1, self.n_candidates)
        scores, ids = self._search(q, fetch)
        out_s, out_i = scores[:, :length].copy(), ids[:, :length].copy()
        if length == 0:
            return out_s, out_i
        # A tie across the cut: the list must end on the lowest indices of the tied scores, which is
        # known only once the fetched list runs past the tie. Fetch further for those queries only.
        cut = out_s[:, length - 1]
        pending = np.flatnonzero(scores[:, -1] == cut) if fetch < self.n_candidates else np.empty(0, dtype=np.int64)
        while pending.size:
            fetch = min(2 * fetch, self.n_candidates)
            s, i = self._search(q[pending], fetch)
            out_s[pending], out_i[pending] = s[:, :length], i[:, :length]
            pending = pending[s[:, -1] == cut[pending]] if fetch < self.n_candidates else pending[:0]
        return out_s, out_i

    def column_best(self) -> ColumnBest:
        if self._best is None:
            value = np.empty(self.n_candidates, dtype=np.float32)
            query = np.empty(self.n_candidates, dtype=np.int64)
            index = self._index(self.queries)
            for offset, block in self.pool_chunks():
                s, i = index.search(np.ascontiguousarray(block, dtype=np.float32), min(8, self.n_queries))
                # equal best scores: the lowest query index, as np.argmax down S's column
                tied = s == s[:, :1]
                value[offset:offset + len(block)] = s[:, 0]
                query[offset:offset + len(block)] = np.where(tied, i, np.iinfo(np.int64).max).min(axis=1)
            self._best = ColumnBest(value, query)
        return self._best

    def dense(self) -> np.ndarray:
        """The whole M x N matrix: only for small pools (UOT through POT, tests)."""
        out = np.empty((self.n_queries, self.n_candidates), dtype=np.float32)
        for offset, block in self.pool_chunks():
            out[:, offset:offset + len(block)] = self.queries @ np.asarray(block, dtype=np.float32).T
        return out


def array_chunks(features: np.ndarray, rows: int = 65_536) -> PoolChunks:
    """Chunks of an in-memory or memory-mapped (N, D) array, converted to float32 one at a time."""

    def chunks():
        for start in range(0, len(features), rows):
            yield start, np.asarray(features[start:start + rows], dtype=np.float32)

    return chunks
