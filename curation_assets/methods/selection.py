"""Selection rules of the reference codebases, as pure functions over arrays (row positions in, row
positions out), each with the reference's filters and tie rules (research/reference-quirks.md §1,
§4, §7; tags-tacos.md §1.5). TAGS, T-SHIRT and IterIT live in their own modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def resolve_budget(budget: float, pool_size: int) -> int:
    """A fraction (0 < budget <= 1) of the pool, or a count (budget > 1)."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    return min(int(budget * pool_size) if budget <= 1 else int(budget), pool_size)


def superfiltering(ifd: np.ndarray, budget: int, threshold: float = 1.0) -> list[int]:
    """select_data.py: keep IFD < threshold (strict; NaN drops out), stable sort descending, first
    `budget`. The reference's budget is int(52002 x rate) (superfiltering_count); the caller gives it."""
    return top_k(ifd, budget, valid=ifd < threshold)  # a stable descending sort, as the reference's


def superfiltering_count(rate: float, reference_pool_size: int = 52002) -> int:
    """select_data.py's sample_num: int(52002 x sample_rate), Alpaca's size hard-coded, whatever
    the pool; `reference_pool_size` is that constant."""
    return int(reference_pool_size * rate)


def cherry(rate: np.ndarray, kept: np.ndarray, budget_rate: float | None = None, count: int | None = None) -> tuple[list[int], int]:
    """data_by_IFD.py's selection: among kept rows (the skips already applied), sort (rate, index)
    ascending and take the last n, returned in dataset order. n = int(len(kept) x rate), the kept
    rows counted as the reference counts them (NaN included), unless a count is given. Deviations:
    NaN rates are not selected (the reference lets them through its `> 1` test) and n = 0 selects
    nothing (the reference's [-0:] selects everything)."""
    idx = np.flatnonzero(kept & ~np.isnan(rate))
    ascending = idx[np.lexsort((idx, rate[idx]))]  # by (rate, index), as sorting the reference's tuples
    n = count if count else int(int(np.count_nonzero(kept)) * (budget_rate or 0))
    if n <= 0:
        return [], n
    return sorted(ascending[-n:].tolist()), n


def top_k(values: np.ndarray, budget: int, *, descending: bool = True, valid: np.ndarray | None = None) -> list[int]:
    """The `budget` best rows by one score, NaN and invalid rows out; ties to the lower row."""
    ok = ~np.isnan(values) if valid is None else valid & ~np.isnan(values)
    idx = np.flatnonzero(ok)
    key = -values[idx] if descending else values[idx]
    return idx[np.lexsort((idx, key))][:budget].tolist()


def random_subset(n: int, budget: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(n)[:budget].tolist()


# --------------------------------------------------------------------------- DEITA


def deita_score(per_key_turn_scores: Sequence[Sequence[Sequence[float]]]) -> np.ndarray:
    """Combined_Filter._sort: per row, sum over turns of the product over keys of the turn scores
    (a single-turn key broadcasts; mismatched turn counts are an error, as in numpy)."""
    n = len(per_key_turn_scores[0])
    out = np.empty(n)
    for i in range(n):
        prod = np.asarray(per_key_turn_scores[0][i], dtype=np.float64)
        for key in per_key_turn_scores[1:]:
            prod = prod * np.asarray(key[i], dtype=np.float64)
        out[i] = prod.sum()
    return out


@dataclass
class DeitaResult:
    selected: list[int]  # row positions in score order
    rejected_by: dict[int, tuple[int, float]]  # row -> (the kept row it was too close to, cosine)
    order: list[int]  # the score order that was scanned


def deita_filter(
    embeddings: np.ndarray, scores: np.ndarray, threshold: float = 0.9, data_size: int = -1, batch_size: int = 1,
    order: Sequence[int] | None = None, block: int = 1024, allow_zero_norm: bool = False,
) -> DeitaResult:
    """DEITA's score-first representation filter (selection/filter/base.py). Rows are scanned by
    score, descending, NaN last (a stable (-score, index) sort: the reference's pandas quicksort leaves ties
    to the platform; pass `order` to reproduce a given one). The first row is kept; a row is
    rejected when its cosine to any kept row is > threshold (strict, float32), or with
    batch_size > 1 to any earlier row of its batch, even a rejected one (the reference's batch
    semantics). Stops once data_size rows are kept (-1: no limit). Not distilabel's filter, which
    compares each row with its nearest neighbour in the whole input. A zero-norm embedding is an
    error (`allow_zero_norm` reproduces the reference: its NaN cosines never reject)."""
    emb = torch.from_numpy(np.array(embeddings, dtype=np.float32))  # a writable copy
    norms = emb.norm(dim=1)
    if (norms == 0).any() and not allow_zero_norm:
        raise ValueError(f"rows {torch.nonzero(norms == 0).ravel().tolist()[:10]} have zero-norm embeddings")
    emb = emb / norms[:, None]  # the reference normalizes twice, in float32
    emb = emb / emb.norm(dim=1)[:, None]
    scores = np.asarray(scores, dtype=np.float64)
    missing = np.isnan(scores)  # pandas puts NaN last
    by_score = np.lexsort((np.arange(len(scores)), np.where(missing, 0.0, -scores), missing))
    scan = list(order) if order is not None else by_score.tolist()
    kept: list[int] = [scan[0]] if scan else []
    rejected: dict[int, tuple[int, float]] = {}
    limit = data_size if data_size > -1 else len(scan)
    if batch_size == 1:
        _scan_one_at_a_time(emb, scan, kept, rejected, threshold, limit, block)
        return DeitaResult(kept[:limit], rejected, scan)
    pos = 1
    while pos < len(scan) and len(kept) < limit:
        chunk = scan[pos : pos + batch_size]
        pos += len(chunk)
        cur = emb[chunk]
        to_kept = cur @ emb[kept].T
        within = cur @ cur.T
        accepted_here: list[int] = []
        for j, row in enumerate(chunk):
            best = int(torch.argmax(to_kept[j]))
            hit = bool((to_kept[j] > threshold).any())
            partner, sim = kept[best], float(to_kept[j, best])
            close = [k for k in range(j) if within[j, k] > threshold]
            if close and (not hit or float(within[j, close[0]]) > sim):
                partner, sim, hit = chunk[close[0]], float(within[j, close[0]]), True
            if hit:
                rejected[row] = (partner, sim)
            else:
                accepted_here.append(j)
        kept.extend(chunk[k] for k in accepted_here)
    return DeitaResult(kept[:limit], rejected, scan)


def _scan_one_at_a_time(emb: torch.Tensor, scan: list[int], kept: list[int], rejected: dict, threshold: float, limit: int, block: int) -> None:
    """batch_size 1 (the reference's default): each row against every row kept before it. Rows are
    compared in blocks: one product against the rows kept before the block, one within the block,
    then a pass in order that also checks the block's own earlier acceptances."""
    kept_emb = torch.empty((max(min(limit, len(scan)), 1), emb.shape[1]), dtype=emb.dtype)
    if kept:
        kept_emb[0] = emb[kept[0]]
    pos = 1
    while pos < len(scan) and len(kept) < limit:
        chunk = scan[pos : pos + block]
        pos += len(chunk)
        cur = emb[chunk]
        best_sim, best_at = (cur @ kept_emb[: len(kept)].T).max(dim=1)
        best_sim, best_at, within = best_sim.numpy(), best_at.numpy(), (cur @ cur.T).numpy()
        accepted = np.zeros(len(chunk), dtype=bool)
        for j, row in enumerate(chunk):
            earlier = np.flatnonzero(accepted[:j])
            k = earlier[np.argmax(within[j, earlier])] if len(earlier) else -1
            near_sim = within[j, k] if k >= 0 else -np.inf
            if best_sim[j] > threshold or near_sim > threshold:
                rejected[row] = (chunk[k], float(near_sim)) if near_sim > best_sim[j] else (kept[best_at[j]], float(best_sim[j]))
                continue
            accepted[j] = True
            kept_emb[len(kept)] = emb[row]
            kept.append(row)
            if len(kept) >= limit:
                return


# --------------------------------------------------------------------------- TACOS

TACOS_VERSION = "2"  # 2: scores above 100 count toward cluster sizes (sorted_1000.py)


def tacos_quotas(cluster_sizes: dict[int, int], budget: int, mode: str = "equal", per_cluster: int | None = None) -> dict[int, int]:
    """Per-cluster quotas: equal (TACOS: a fixed number per cluster, default budget // K),
    proportional to size, or to its square root."""
    k = len(cluster_sizes)
    if not k:
        return {}
    if mode == "equal":
        q = per_cluster if per_cluster is not None else budget // k
        return {c: q for c in cluster_sizes}
    weights = {c: (s if mode == "proportional" else math.sqrt(s)) for c, s in cluster_sizes.items()}
    total = sum(weights.values())
    return {c: int(budget * w / total) for c, w in weights.items()}


@dataclass
class TacosResult:
    selected: list[int]
    picked_in: dict[int, int]  # row -> cluster it was taken for (-1: global fill)
    reason: dict[int, str]


def tacos_select(
    scores: list[tuple[int, int, float]], budget: int, *, mode: str = "equal", per_cluster: int | None = None, fill: bool = True
) -> TacosResult:
    """sorted_1000.py: visit clusters from the smallest, take up to the cluster's quota of its best
    scored items, skipping items already taken and scores above 100. `scores` holds (row, cluster,
    score) judgements in judging order, which breaks ties as the reference's stable sorts do (equal
    scores: the earlier judgement; equal sizes: the cluster judged first). Several judgements of a
    row in one cluster (re-pairings, both orders) count as their mean. mode "global" is plain
    top-budget by each row's mean over all its judgements. With `fill`, the quota small clusters
    leave unused goes to the best remaining rows by mean score (research PROPOSAL; the reference
    stops at K x 20).

    A score above 100 is never selected, but its row still counts toward its cluster's size, as in
    the reference (its `length_56` is the length of the cluster's whole judged list), so it can
    change the visiting order, the number of clusters K and size-based quotas."""
    by_row: dict[int, list[float]] = {}
    in_cluster: dict[int, dict[int, list[float]]] = {}  # cluster -> row -> valid scores, both in first-judged order
    for r, c, s in scores:
        if s is None or math.isnan(s):
            continue
        cluster = in_cluster.setdefault(c, {}).setdefault(r, [])
        if s <= 100:
            by_row.setdefault(r, []).append(s)
            cluster.append(s)
    mean = {r: sum(v) / len(v) for r, v in by_row.items()}
    taken: list[int] = []
    picked_in: dict[int, int] = {}
    reason: dict[int, str] = {r: "judged score above 100 (never selected, as in TACOS)" for c in in_cluster.values() for r in c if r not in by_row}
    if mode != "global":
        sizes = {c: len(rows) for c, rows in in_cluster.items()}
        quotas = tacos_quotas(sizes, budget, mode, per_cluster)
        for c in sorted(in_cluster, key=lambda c: sizes[c]):  # stable: equal sizes keep judging order
            got = 0
            ranked = sorted(((r, v) for r, v in in_cluster[c].items() if v), key=lambda item: -sum(item[1]) / len(item[1]))
            for r, _ in ranked:
                if got >= quotas[c] or len(taken) >= budget:
                    reason.setdefault(r, f"cluster {c} quota of {quotas[c]} already filled")
                    continue
                if r in picked_in:
                    continue
                taken.append(r)
                picked_in[r] = c
                got += 1
    if mode == "global" or fill:
        for r in sorted(mean, key=lambda r: (-mean[r], r)):
            if len(taken) >= budget:
                break
            if r not in picked_in:
                taken.append(r)
                picked_in[r] = -1
    for r in mean:
        if r not in picked_in:
            reason.setdefault(r, "below the budget by score")
    return TacosResult(taken, picked_in, {r: v for r, v in reason.items() if r not in picked_in})


# --------------------------------------------------------------------------- InsTag


def instag(tag_sets: Sequence[Sequence[str]], budget: int) -> tuple[list[int], list[int]]:
    """InsTag's Algorithm 1, complexity-first diverse sampling (tags-tacos.md §3): rows by number
    of tags, most first (stable: pool order on ties); each pass starts from an empty tag set and
    takes every row that adds a tag not yet seen in that pass; passes repeat over the rows left
    until the budget is met. Rows without tags are never taken (the reference would loop for ever).
    Returns (picks in order, new tags each pick added)."""
    ids: dict[str, int] = {}
    coded = [np.unique(np.fromiter((ids.setdefault(t, len(ids)) for t in tags), dtype=np.int64)) for tags in tag_sets]
    remaining = sorted((i for i, c in enumerate(coded) if len(c)), key=lambda i: -len(coded[i]))
    picked: list[int] = []
    new: list[int] = []
    while remaining and len(picked) < budget:
        seen = np.zeros(len(ids), dtype=bool)
        left = []
        for i in remaining:
            if len(picked) >= budget:
                break
            fresh = int(np.count_nonzero(~seen[coded[i]]))
            if fresh:
                picked.append(i)
                new.append(fresh)
                seen[coded[i]] = True
            else:
                left.append(i)
        remaining = left
    return picked, new


def instag_metrics(tag_sets: Sequence[Sequence[str]], subset: Sequence[int]) -> dict[str, float]:
    """InsTag's measures: complexity = mean number of tags per row; diversity = share of the pool's
    unique tags the subset covers."""
    pool_tags = {t for tags in tag_sets for t in tags}
    chosen = [set(tag_sets[i]) for i in subset]
    return {
        "complexity": float(np.mean([len(t) for t in chosen])) if chosen else 0.0,
        "tag_coverage": len(set().union(*chosen)) / len(pool_tags) if pool_tags else 0.0,
    }
