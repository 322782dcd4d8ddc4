"""Selection strategies at scale on this machine: time and peak memory.

TAGS: 1,000,000 rows over a 10,000-leaf tree (five levels, ~5 children per node), 1-4 leaves per
row drawn from a Zipf law, quality uniform in [0.5, 1], budget 5% (50,000 rows): plain lazy greedy, and greedy with KL
alignment to a target concentrated on a few branches. The other strategies on synthetic scores of
the same pool (T-SHIRT, IterIT and DEITA on smaller pools, as noted: their inputs are per-token
arrays, documents and embeddings).

Side by side with the reference approach, on the first 100,000 rows: TAGS lazy greedy against
plain greedy that re-scores every row each step (as MIG's sampler does; same picks), and MIG's
first-order gain itself; DEITA's filter against its row-at-a-time loop (same picks).

    python benchmarks/bench_selection.py [--rows 1000000] [--leaves 10000]
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation_assets.methods import selection as rules  # noqa: E402
from curation_assets.methods.iterit import greedy_order  # noqa: E402
from curation_assets.methods.tags_sampler import TreeIndex, all_gains, kl_greedy, lazy_greedy, linear_greedy, node_mass_matrix, target_distribution  # noqa: E402
from curation_assets.methods.tshirt import hierarchical_top_k, tshirt_statistics  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_tree(n_leaves: int, branching: int = 5, seed: int = 0):
    """Node ids: root 0, then levels top-down; leaves last. Returns (TreeIndex, leaf ids, parent of leaf)."""
    rng = np.random.default_rng(seed)
    sizes = [n_leaves]
    while sizes[-1] > 20:
        sizes.append(int(np.ceil(sizes[-1] / branching)))
    sizes = sizes[::-1]  # top level first
    ids, parents, depths = [0], [None], [0]
    previous = [0]
    for depth, size in enumerate(sizes, start=1):
        level = list(range(len(ids), len(ids) + size))
        for node in level:
            ids.append(node)
            parents.append(int(rng.choice(previous)) if depth > 1 else 0)
            depths.append(depth)
        previous = level
    tree = TreeIndex.from_nodes(ids, parents, depths)
    return tree, np.asarray(previous), np.asarray([parents[i] for i in previous])


def plain_greedy(a, budget, w):
    """The reference approach: every row's exact gain recomputed at every step."""
    mass, picked, order = np.zeros(a.shape[1]), np.zeros(a.shape[0], dtype=bool), []
    for _ in range(budget):
        gains = all_gains(a, mass, w)
        gains[picked] = -np.inf
        x = int(np.argmax(gains))
        picked[x] = True
        order.append(x)
        row = a.getrow(x)
        mass[row.indices] += row.data
    return order


def deita_loop(emb, scores, threshold, limit):
    """DEITA's filter as its code runs it: one candidate at a time against every kept row."""
    import torch

    e = torch.nn.functional.normalize(torch.from_numpy(emb), dim=1)
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        if not kept or not bool((e[kept] @ e[i] > threshold).any()):
            kept.append(int(i))
            if len(kept) >= limit:
                break
    return kept


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--leaves", type=int, default=10_000)
    parser.add_argument("--budget", type=float, default=0.05)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, budget = args.rows, int(args.rows * args.budget)
    base = rss_mb()
    print(f"pool {n:,} rows, budget {budget:,}; machine: {__import__('os').cpu_count()} cores\n")

    t = time.perf_counter()
    tree, leaf_ids, leaf_parent = synthetic_tree(args.leaves)
    per_row = rng.integers(1, 5, n)
    zipf = 1 / np.arange(1, len(leaf_ids) + 1) ** 0.8
    leaves = leaf_ids[rng.choice(len(leaf_ids), size=int(per_row.sum()), p=zipf / zipf.sum())]
    rows = np.repeat(np.arange(n), per_row)
    weights = np.repeat(1.0 / per_row, per_row)
    quality = rng.uniform(0.5, 1.0, n)  # scores vary in real pools; all-equal quality is CELF's worst case (ties)
    a = node_mass_matrix(rows, leaves, weights, quality, tree, n)
    build = time.perf_counter() - t
    print(f"{'TAGS: tree index + node masses':<46}{build:>8.1f} s  ({a.nnz:,} row-node entries, {tree.n_nodes:,} nodes)")

    results = []

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        results.append((name, time.perf_counter() - start, rss_mb() - base))
        print(f"{name:<46}{results[-1][1]:>8.1f} s  peak +{results[-1][2]:,.0f} MiB")
        return out

    plain = timed(f"TAGS lazy greedy, {n:,} rows -> {budget:,}", lambda: lazy_greedy(a, budget, tree.weights()))
    print(f"{'':<46}leaves covered: {len(np.unique(leaves[np.isin(rows, plain.order)])):,} of {len(leaf_ids):,}")
    column = {leaf: k for k, leaf in enumerate(leaf_ids)}
    lw = sp.csr_matrix((weights, (rows, np.fromiter((column[x] for x in leaves), dtype=np.int64, count=len(leaves)))), shape=(n, len(leaf_ids)))
    target_counts = np.zeros(len(leaf_ids))
    target_counts[rng.choice(len(leaf_ids), 200, replace=False)] = rng.uniform(1, 5, 200)
    target = target_distribution(target_counts, leaf_parent, mu=0.2)
    kl_budget = min(budget, 5_000)
    timed(f"TAGS greedy + KL alignment, -> {kl_budget:,}", lambda: kl_greedy(a, lw, target, kl_budget, tree.weights()))

    n_ref, b_ref = min(n, 100_000), min(n, 100_000) // 20
    a_ref = a[:n_ref]
    ours = timed(f"TAGS lazy greedy, {n_ref:,} rows -> {b_ref:,}", lambda: lazy_greedy(a_ref, b_ref, tree.weights()))
    ref = timed("  reference: plain greedy, same input", lambda: plain_greedy(a_ref, b_ref, tree.weights()))
    print(f"{'':<46}ratio {results[-1][1] / results[-2][1]:.1f}x, same picks: {ref == ours.order}")
    timed("  MIG's first-order gain (mig_linear)", lambda: linear_greedy(a_ref, b_ref, tree.weights()))

    ifd = rng.uniform(0.5, 1.2, n)
    timed(f"Superfiltering, {n:,} rows", lambda: rules.superfiltering(ifd, budget))
    timed(f"Cherry, {n:,} rows", lambda: rules.cherry(ifd, ifd <= 1, count=budget))
    timed(f"top-k, {n:,} rows", lambda: rules.top_k(ifd, budget))
    timed(f"random, {n:,} rows", lambda: rules.random_subset(n, budget, 0))
    judged = [(int(r), int(rng.integers(0, 50)), float(rng.uniform(0, 100))) for r in range(n)]
    timed(f"TACOS equal quotas, {n:,} rows / 50 clusters", lambda: rules.tacos_select(judged, budget))

    n_ts = 100_000
    d = [[rng.normal(0, 0.3, int(t)).astype(np.float32) for _ in range(30)] for t in rng.integers(20, 80, n_ts)]
    noisy = [rng.uniform(0.6, 1.1, 30) for _ in range(n_ts)]
    stats = timed(f"T-SHIRT statistics, {n_ts:,} rows x 30 copies", lambda: tshirt_statistics(noisy, d, 0.5))
    timed(f"T-SHIRT hierarchical top-k -> {n_ts // 20:,}", lambda: hierarchical_top_k(stats.avg_noisy_ifd, stats.avg_noisy_sifd, stats.std_noisy_sifd, n_ts // 20))

    n_dt = 100_000
    emb = rng.normal(size=(n_dt, 384)).astype(np.float32)
    emb[: n_dt // 2] = emb[: n_dt // 2] * 0.1 + emb[0]  # a dense cluster, so the filter rejects rows
    deita_scores = rng.uniform(1, 36, n_dt)
    mine = timed(f"DEITA filter, {n_dt:,} rows -> {n_dt // 20:,}", lambda: rules.deita_filter(emb, deita_scores, 0.9, n_dt // 20))
    theirs = timed("  reference: row-at-a-time loop", lambda: deita_loop(emb, deita_scores, 0.9, n_dt // 20))
    print(f"{'':<46}ratio {results[-1][1] / results[-2][1]:.1f}x, same picks: {theirs == mine.selected}")

    n_it = 20_000
    words = np.array("data model train select score token sample query answer code math story list table chart plan".split())
    docs = [" ".join(words[rng.integers(0, len(words), 40)]) for _ in range(n_it)]
    timed(f"IterIT TF-IDF greedy, {n_it:,} rows -> {n_it // 20:,}", lambda: greedy_order(rng.uniform(0.5, 1.1, n_it).astype(np.float32), docs, range(n_it), n_it, n_it // 20))


if __name__ == "__main__":
    main()
