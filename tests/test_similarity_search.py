"""methods/similarity_search.py: query x candidate similarity served from a dense matrix or from
feature vectors through faiss in pool chunks, with the lowest index winning every tie."""

import warnings

import numpy as np
import pytest

from curation_assets.methods import tis_selection as tis
from curation_assets.methods.similarity_search import DenseSimilarity, FaissSimilarity, array_chunks


def test_dense_top_lists_and_column_best_break_ties_to_the_lowest_index():
    s = np.array([[0.2, 0.9, 0.9, 0.1], [0.9, 0.3, 0.9, 0.1]])
    d = DenseSimilarity(s)
    scores, ids = d.top(np.arange(2), 3)
    assert ids.tolist() == [[1, 2, 0], [0, 2, 1]] and scores.tolist() == [[0.9, 0.9, 0.2], [0.9, 0.9, 0.3]]
    assert d.top(np.array([1]), 10)[1].tolist() == [[0, 2, 1, 3]]  # a length past the pool is the whole pool
    best = d.column_best()
    assert best.query.tolist() == [1, 0, 0, 0] and best.value.tolist() == [0.9, 0.9, 0.9, 0.1]  # column 2 ties: query 0


def test_bad_matrices_and_features_are_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        DenseSimilarity(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        DenseSimilarity(np.array([[0.1, np.inf]]))
    with pytest.raises(ValueError, match="query features"):
        FaissSimilarity(np.array([[np.nan, 1.0]]), array_chunks(np.ones((3, 2))), 3)
    pool = np.ones((5, 2), dtype=np.float32)
    pool[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"rows 2\.\.3"):
        FaissSimilarity(np.ones((1, 2)), array_chunks(pool, rows=2), 5).top(np.arange(1), 2)


def test_array_chunks_cover_the_pool_in_order_as_float32():
    features = np.arange(14, dtype=np.float64).reshape(7, 2)
    chunks = list(array_chunks(features, rows=3)())
    assert [offset for offset, _ in chunks] == [0, 3, 6] and [len(b) for _, b in chunks] == [3, 3, 1]
    assert all(b.dtype == np.float32 for _, b in chunks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in chunks]), features)


def test_faiss_dense_matrix_is_queries_times_pool():
    rng = np.random.default_rng(0)
    pool, queries = rng.standard_normal((11, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(FaissSimilarity(queries, array_chunks(pool, rows=4), 11).dense(), queries @ pool.T, rtol=1e-6)


def test_faiss_source_equals_dense_on_features_with_ties():
    rng = np.random.default_rng(3)
    pool = rng.integers(-2, 3, (500, 8)).astype(np.float32)  # integer features: many exact score ties
    pool[100] = pool[7]
    queries = rng.integers(-2, 3, (7, 8)).astype(np.float32)
    dense = DenseSimilarity((queries @ pool.T).astype(np.float64))
    faiss_source = FaissSimilarity(queries, array_chunks(pool, rows=64), len(pool))
    for length in (1, 5, 33, 500):
        d_scores, d_ids = dense.top(np.arange(7), length)
        f_scores, f_ids = faiss_source.top(np.arange(7), length)
        np.testing.assert_array_equal(f_ids, d_ids)
        np.testing.assert_allclose(f_scores, d_scores)
    best_d, best_f = dense.column_best(), faiss_source.column_best()
    np.testing.assert_array_equal(best_f.query, best_d.query)
    for algorithm in (tis.round_robin, tis.doubly_greedy):
        assert algorithm(faiss_source, 120).order.tolist() == algorithm(dense, 120).order.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tis.knn_uniform(faiss_source, 100).order.tolist() == tis.knn_uniform(dense, 100).order.tolist()


def test_a_tie_at_the_cut_refetches_only_its_query_and_only_past_the_tie():
    """One query whose 3rd and 4th scores tie: only that query is searched again, with a longer
    list, and the search stops once the list runs past the tie (never the whole pool)."""
    rng = np.random.default_rng(5)
    pool = rng.standard_normal((4000, 16)).astype(np.float32)
    queries = rng.standard_normal((6, 16)).astype(np.float32)
    top = np.argsort(-(queries[0] @ pool.T))
    pool[top[3]] = pool[top[2]]  # query 0: ranks 3 and 4 (1-based) tie
    source = FaissSimilarity(queries, array_chunks(pool, rows=512), len(pool))
    calls = []
    search = source._search
    source._search = lambda q, k: (calls.append((len(q), k)), search(q, k))[1]
    scores, ids = source.top(np.arange(6), 3)
    assert calls[0] == (6, 4) and all(n == 1 and k < len(pool) for n, k in calls[1:]) and len(calls) == 2
    dense = DenseSimilarity((queries @ pool.T).astype(np.float64))
    np.testing.assert_array_equal(ids, dense.top(np.arange(6), 3)[1])
