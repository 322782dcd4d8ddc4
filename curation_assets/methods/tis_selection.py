"""The targeted selection algorithms of the TIS study (research/targeted.md §4; reference-quirks.md §5).

Each algorithm reads a similarity S (queries x candidates, larger = more similar) through a
`DenseSimilarity` or `FaissSimilarity` (similarity_search.py) and returns a `TargetedOrder`: candidate
positions in pick order, with the query that claimed each pick and the value that decided it.
Budgets take prefixes, so all budgets nest (TIS sim_subset.py).

Reference behaviour kept: RR's query order and lowest-index tie rule; DG's max over queries; UOT's
POT call and constants; KNN-Uniform's K rule and (-p, index) order; KNN-KDE's kernel, heap, float32
scalars and leftover mass. Deviations, each from the notes: NaN/inf inputs are an error (RR/DG
would pick NaN first); DG and UOT sort stably by (-score, index) where the reference's quicksort
leaves ties unordered; KNN-Uniform ranks neighbours stably by (distance, index); KNN-KDE's
"fewer than 10,000 candidates with mass" is a warning unless `strict_guard` (the reference raises).
"""

from __future__ import annotations

import heapq
import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from curation_assets.methods.similarity_search import DenseSimilarity

VERSION = "tis-1"

# TIS constants (selection/uot.py, selection/tsds_subset.py)
UOT_EPS, UOT_REG_M = 0.01, (float("inf"), 1e-4)
TSDS_ALPHA, TSDS_C, TSDS_L = 0.01, 5.0, 5000
KDE_SIGMA, KDE_MAX_K, KDE_K = 0.75, 5000, 1000
KDE_MIN_NONZERO = 10_000


@dataclass
class TargetedOrder:
    """`order[r]` is the candidate picked at rank r; the other arrays align with it."""

    order: np.ndarray  # candidate positions
    query: np.ndarray  # the query that claimed it (RR: whose turn; others: its most similar query)
    similarity: np.ndarray  # S[query, candidate]
    score: np.ndarray  # the value the algorithm ranked by (RR: the similarity)
    score_name: str
    round: np.ndarray | None = None  # RR: the round (0-based) of the pick
    info: dict | None = None  # algorithm-level facts (K, iterations, ...) for the UI


def _claims(source, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    best = source.column_best()
    return best.query[order], best.value[order]


def _check_budget(k: int, n: int) -> None:
    if k > n:
        raise ValueError(f"budget {k} exceeds the {n} candidates")
    if k < 0:
        raise ValueError(f"budget must be >= 0, got {k}")


# --------------------------------------------------------------------------- round robin


def round_robin(source, k: int) -> TargetedOrder:
    """TIS round_robin_selection: queries take turns in index order; each takes its best unused
    candidate (lowest index among equal scores). Every turn adds a new candidate.

    Runs over each query's sorted top list with a pointer that skips used candidates, refetching a
    longer list (2x) when one runs out: O(M N log L) through faiss instead of O(k N).
    """
    m, n = source.n_queries, source.n_candidates
    _check_budget(k, n)
    if m == 0:
        raise ValueError("round robin needs at least one query")
    length = min(n, max(16, 2 * math.ceil(k / m) + 8))
    scores, ids = source.top(np.arange(m), length)
    lists = [(scores[i], ids[i]) for i in range(m)]
    pointer = np.zeros(m, dtype=np.int64)
    used = np.zeros(n, dtype=bool)
    order, query, sim, rnd = (np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64), np.empty(k), np.empty(k, dtype=np.int64))
    for r in range(k):
        i = r % m
        s_i, id_i = lists[i]
        p = pointer[i]
        while True:
            while p < len(id_i) and used[id_i[p]]:
                p += 1
            if p < len(id_i):
                break
            if len(id_i) >= n:  # cannot happen while r < k <= n; guards a broken source
                raise RuntimeError("round robin ran out of candidates")
            s_new, id_new = source.top(np.array([i]), min(n, 2 * len(id_i)))
            s_i, id_i = lists[i] = (s_new[0], id_new[0])
        j = id_i[p]
        used[j] = True
        pointer[i] = p + 1
        order[r], query[r], sim[r], rnd[r] = j, i, s_i[p], r // m
    return TargetedOrder(order, query, sim, sim.copy(), "similarity to its query", round=rnd)


# --------------------------------------------------------------------------- doubly greedy


def doubly_greedy(source, k: int) -> TargetedOrder:
    """TIS doubly_greedy_selection: candidates by their max similarity over queries, descending;
    equal maxima by index (the reference's quicksort leaves them unordered)."""
    _check_budget(k, source.n_candidates)
    best = source.column_best()
    value = best.value.astype(np.float64)
    if k < len(value):
        part = np.argpartition(-value, k - 1)[:k] if k else np.empty(0, dtype=np.int64)
        cut = value[part].min() if k else np.inf
        pool = np.flatnonzero(value >= cut)  # every candidate tied with the k-th stays in the race
    else:
        pool = np.arange(len(value))
    order = pool[np.lexsort((pool, -value[pool]))][:k]
    return TargetedOrder(order, best.query[order], value[order], value[order], "max similarity over queries")


# --------------------------------------------------------------------------- UOT


def uot_column_mass(s: np.ndarray, eps: float = UOT_EPS, reg_m=UOT_REG_M) -> np.ndarray:
    """TIS uot_selection's scores: column sums of POT's sinkhorn_unbalanced plan for the cost
    (1 - S)/2, uniform masses, KL marginal penalties (inf on queries, 1e-4 on candidates)."""
    from ot.unbalanced import sinkhorn_unbalanced

    m, n = s.shape
    cost = (1.0 - s) / 2.0
    a = np.ones(m, dtype=np.float64) / m
    b = np.ones(n, dtype=np.float64) / n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # POT warns when it stops at numItermax
        plan = sinkhorn_unbalanced(a, b, cost, reg=eps, reg_m=reg_m, reg_type="kl")
    return plan.sum(axis=0)


def sparse_uot_column_mass(scores: np.ndarray, ids: np.ndarray, n: int, eps: float = UOT_EPS, reg_m2: float = UOT_REG_M[1],
                           max_iter: int = 1000, stop: float = 1e-6) -> np.ndarray:
    """The same Sinkhorn iterations as POT's sinkhorn_knopp_unbalanced (reg_type kl, exact query
    marginal) on a kernel kept only on each query's top-L candidates (others: zero transport).
    With L = N this is POT's plan; with L < N it is the truncation faiss makes possible on large
    pools, where exp(-(1 - S)/(2 eps)) is negligible beyond each query's nearest candidates."""
    m, length = scores.shape
    cols, inverse = np.unique(ids.ravel(), return_inverse=True)
    a = np.full(m, 1.0 / m)
    b = np.full(len(cols), 1.0 / n)
    kernel = np.exp(-((1.0 - scores.astype(np.float64)) / 2.0) / eps) * (a[:, None] * (1.0 / n))
    k_mat = sp.csr_matrix((kernel.ravel(), inverse, np.arange(0, m * length + 1, length)), shape=(m, len(cols)))
    k_t = k_mat.T.tocsr()
    fi = reg_m2 / (reg_m2 + eps)
    u, v = np.ones(m), np.ones(len(cols))
    for _ in range(max_iter):
        u_prev, v_prev = u, v
        u = a / (k_mat @ v)
        ktu = k_t @ u
        v = (b / ktu) ** fi
        if (ktu == 0).any() or not (np.isfinite(u).all() and np.isfinite(v).all()):
            u, v = u_prev, v_prev
            break
        err_u = np.abs(u - u_prev).max() / max(np.abs(u).max(), np.abs(u_prev).max(), 1.0)
        err_v = np.abs(v - v_prev).max() / max(np.abs(v).max(), np.abs(v_prev).max(), 1.0)
        if 0.5 * (err_u + err_v) < stop:
            break
    mass = np.zeros(n)
    mass[cols] = v * (k_t @ u)
    return mass


def uot(source, k: int, *, candidates_per_query: int | None = None) -> TargetedOrder:
    """TIS uot_selection. With a dense source (or candidates_per_query None on a small pool) the
    plan is POT's own; otherwise the kernel is truncated to each query's top candidates."""
    n = source.n_candidates
    _check_budget(k, n)
    if isinstance(source, DenseSimilarity) or candidates_per_query is None or candidates_per_query >= n:
        mass = uot_column_mass(np.asarray(source.dense(), dtype=np.float64) if not isinstance(source, DenseSimilarity) else source.s)
        support = n
    else:
        scores, ids = source.top(np.arange(source.n_queries), candidates_per_query)
        mass = sparse_uot_column_mass(scores, ids, n)
        support = int(np.unique(ids).size)
    order = np.lexsort((np.arange(n), -mass))[:k]
    query, sim = _claims(source, order)
    return TargetedOrder(order, query, sim, mass[order], "transported mass", info={"uot_support": support})


# --------------------------------------------------------------------------- KNN-Uniform


def _gap_sum(d: np.ndarray, kk: int) -> float:
    """sum_i sum_{k<K} (d[i,K] - d[i,k]), summed as the reference sums it."""
    return (d[:, kk][:, None] - d[:, :kk]).sum()


def knn_uniform_k(d: np.ndarray, alpha: float = TSDS_ALPHA, c: float = TSDS_C) -> int:
    """The smallest K >= 1 with (alpha/C) * gaps(K) >= (1 - alpha) M (or L): run_tsds_knn_uniform's
    while loop, found with a cumulative sum and confirmed with the reference's own sum."""
    m, length = d.shape
    rhs = (1.0 - alpha) * m
    if length < 2:
        return 1
    dd = d.astype(np.float64)
    ks = np.arange(1, length)
    gaps = (ks * dd[:, 1:].sum(axis=0) - np.cumsum(dd, axis=1)[:, :-1].sum(axis=0))  # gaps(K) for K = 1..L-1
    hit = np.flatnonzero((alpha / c) * gaps >= rhs)
    kk = int(ks[hit[0]]) if hit.size else length
    # confirm at float precision around the found K (a cumulative sum rounds differently)
    while kk > 1 and (alpha / c) * _gap_sum(d, kk - 1) >= rhs:
        kk -= 1
    while kk < length and (alpha / c) * _gap_sum(d, kk) < rhs:
        kk += 1
    return kk


def knn_uniform(source, k: int | None = None, *, neighbours: int = TSDS_L) -> TargetedOrder:
    """TIS run_tsds_knn_uniform: d = 1 - S over each query's L = min(5000, N) nearest candidates,
    K chosen by the TSDS stop rule, mass 1/(K M) on each query's K nearest, order (-p, index)."""
    m, n = source.n_queries, source.n_candidates
    if k is not None:
        _check_budget(k, n)
    length = min(neighbours, n)
    scores, ids = source.top(np.arange(m), length)
    d = 1.0 - scores
    rank = np.lexsort((ids, d), axis=1)  # stable (distance, index)
    d, ids = np.take_along_axis(d, rank, axis=1), np.take_along_axis(ids, rank, axis=1)
    kk = knn_uniform_k(d)
    probs = np.zeros(n)
    np.add.at(probs, ids[:, :kk].ravel(), 1.0 / (kk * m))
    nonzero = int((probs > 0).sum())
    if nonzero < KDE_MIN_NONZERO:
        warnings.warn(f"KNN-Uniform: only {nonzero} candidates have non-zero probability (TSDS warns below {KDE_MIN_NONZERO:,})", stacklevel=2)
    order = np.lexsort((np.arange(n), -probs))
    order = order if k is None else order[:k]
    query, sim = _claims(source, order)
    return TargetedOrder(order, query, sim, probs[order], "KNN mass", info={"K": kk, "nonzero_mass": nonzero})


# --------------------------------------------------------------------------- KNN-KDE


def kde_values(neighbour_sims: np.ndarray, sigma: float = KDE_SIGMA) -> np.ndarray:
    """run_tsds_kde's density: per row, sum over its KDE_K most similar candidates (itself included)
    of max(0, 1 - 2 d / sigma^2), d = max(0, 1 - sim), in float32 as the reference."""
    dist = np.sort(np.maximum(np.float32(1.0) - neighbour_sims.astype(np.float32), np.float32(0.0)), axis=1)
    kernel = np.float32(1.0) - (np.float32(2.0) * dist) / np.float32(sigma**2)
    kernel = kernel * (kernel > 0)
    return kernel.sum(axis=-1).astype(np.float32)


def kde_mass(top_dists: np.ndarray, top_indices: np.ndarray, top_kdes: np.ndarray, n: int, max_k: int,
             alpha: float = TSDS_ALPHA, c: float = TSDS_C) -> tuple[np.ndarray, list[int]]:
    """run_tsds_kde's heap water-filling, with its float32 scalars (NumPy >= 2 semantics) and its
    tuple order (count, k, query) for ties. Returns the per-candidate probabilities and lastK."""
    m = top_indices.shape[0]
    last_k = [0] * m
    heap = [(np.float32(1.0) / top_kdes[j][0], 0, j) for j in range(m)]
    heapq.heapify(heap)
    weighted = [top_dists[j][0] / top_kdes[j][0] for j in range(m)]
    s = 0.0
    cost = np.zeros(m, dtype=np.float64)
    total = 0.0
    while heap:
        count, kk, j = heapq.heappop(heap)
        s = count
        total -= cost[j]
        cost[j] = top_dists[j][kk + 1] * count - weighted[j]
        total += cost[j]
        if (alpha / c) * total >= (1 - alpha) * m:
            break
        last_k[j] = kk
        if kk < max_k - 2:
            count = count + np.float32(1.0) / top_kdes[j][kk + 1]
            heapq.heappush(heap, (count, kk + 1, j))
            weighted[j] = weighted[j] + top_dists[j][kk + 1] / top_kdes[j][kk + 1]
    probs = np.zeros(n, dtype=np.float64)
    for j in range(m):
        prob_sum = 0.0
        for kk in range(last_k[j] + 1):
            probs[top_indices[j][kk]] += 1.0 / m / s / top_kdes[j][kk]
            prob_sum += 1.0 / m / s / top_kdes[j][kk]
        probs[top_indices[j][last_k[j] + 1]] += max(1.0 / m - prob_sum, 0.0)
    return probs, last_k


def knn_kde(source, candidate_features, k: int | None = None, *, strict_guard: bool = False,
            max_k: int = KDE_MAX_K, kde_k: int = KDE_K, sigma: float = KDE_SIGMA) -> TargetedOrder:
    """TIS run_tsds_kde. `candidate_features(rows, kde_k)` returns, for each candidate position in
    `rows`, the similarities of its kde_k most similar candidates among `rows` (itself included):
    with gradient features, the LR-weighted cosine over checkpoints (see `weighted_neighbour_sims`)."""
    m, n = source.n_queries, source.n_candidates
    if k is not None:
        _check_budget(k, n)
    max_k = min(max_k, max(1, n // 10))  # the reference's caps
    kde_k = min(kde_k, max(1, n // 10))
    scores, ids = source.top(np.arange(m), int(min(max(max_k, 2), n)))  # _prefetch_knn_argsort's K
    dists = np.maximum((1.0 - scores).astype(np.float32), np.float32(0.0))
    rank = np.lexsort((ids, dists), axis=1)  # mergesort on distance: ties to the lowest index
    top_dists, top_indices = np.take_along_axis(dists, rank, axis=1), np.take_along_axis(ids, rank, axis=1)
    union = np.unique(top_indices)
    if sigma == 0:
        top_kdes = np.ones_like(top_dists, dtype=np.float32)
    else:
        kde = kde_values(candidate_features(union, min(kde_k, len(union))), sigma)
        top_kdes = kde[np.searchsorted(union, top_indices)]
    probs, last_k = kde_mass(top_dists, top_indices, top_kdes, n, max_k)
    nonzero = int((probs > 0).sum())
    if nonzero < KDE_MIN_NONZERO:
        message = f"KNN-KDE: only {nonzero} candidates have non-zero probability (the reference raises below {KDE_MIN_NONZERO:,})"
        if strict_guard:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    order = np.lexsort((np.arange(n), -probs))
    order = order if k is None else order[:k]
    query, sim = _claims(source, order)
    info = {"prefetch_K": max_k, "kde_K": kde_k, "mean_lastK_plus_1": float(np.mean(np.array(last_k) + 1)), "nonzero_mass": nonzero}
    return TargetedOrder(order, query, sim, probs[order], "KDE-weighted mass", info=info)


def weighted_neighbour_sims(features_by_checkpoint: list[np.ndarray], weights: list[float], chunk: int = 256):
    """The candidate_features callable of knn_kde for per-checkpoint unit features: per row of the
    prefetched union, the kde_k largest sum_t w_t <x_t(u), x_t(u')> over u' in the union, as the
    reference computes them (float32 torch, 256 rows at a time, weights as float32): memory is one
    chunk x |union| block."""
    import torch

    def sims(rows: np.ndarray, kde_k: int) -> np.ndarray:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        lrs = torch.tensor(weights, dtype=torch.float32, device=device)
        feats = [torch.as_tensor(np.asarray(f[rows], dtype=np.float32), device=device) for f in features_by_checkpoint]
        out = np.empty((len(rows), kde_k), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(rows), chunk):
                block = torch.zeros((min(chunk, len(rows) - start), len(rows)), device=device)
                for t, f in enumerate(feats):
                    block += lrs[t] * (f[start:start + chunk] @ f.T)
                out[start:start + len(block)] = torch.topk(block, k=kde_k, dim=1).values.cpu().numpy()
        return out

    return sims


def checkpoint_weights(log_history: list[dict], num_epochs: int) -> list[float]:
    """TIS compute_avg_lr: the mean logged learning rate of each epoch's log entries (entries read
    in order while their epoch <= e + 1), normalized to sum to 1."""
    pos, means = 0, []
    for epoch in range(num_epochs):
        values = []
        while pos < len(log_history) and "epoch" in log_history[pos] and log_history[pos]["epoch"] <= epoch + 1:
            if "learning_rate" in log_history[pos]:
                values.append(log_history[pos]["learning_rate"])
            pos += 1
        if values:
            means.append(float(np.mean(values)))
    total = sum(means)
    if not means or total <= 0:
        raise ValueError("the trainer log holds no learning rates to weight the checkpoints by")
    return [x / total for x in means]


ALGORITHMS = {"round_robin": round_robin, "doubly_greedy": doubly_greedy, "uot": uot, "knn_uniform": knn_uniform, "knn_kde": knn_kde}
