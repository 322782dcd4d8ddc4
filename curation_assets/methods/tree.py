"""The TAGS knowledge tree (research/tags-tacos.md §2.3-2.4): bottom-up clustering of canonical tags.

Leaves are the canonical tags. Each level clusters the current nodes' embeddings with spherical
k-means into ceil(n / branching) parents, weighting each node by its rows (Clio-style levels,
embedding-only; the LLM refine steps of §2.3 are reduced to optional naming). A parent's vector is
the row-weighted mean of its children's, re-normalized. Levels stop at <= `top` nodes or
`max_depth` levels; a single root goes on top.

Grounding (§2.4): a row's leaves are its canonical tags. A tag outside the tree (a target-set tag)
maps to its nearest leaf by cosine, or to the nearest internal node when that leaf is less similar
than `tau` (0.75).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

ROOT = 0


@dataclass(frozen=True)
class TreeSettings:
    branching: int = 5
    top: int = 20
    max_depth: int = 8
    seed: int = 0
    kmeans_iterations: int = 25


def leaf_concepts(labels: list[str], vectors: np.ndarray, rows: np.ndarray, threshold: float = 0.9) -> list[str]:
    """The leaf concept of each tag: tags whose embeddings have cosine >= `threshold` to a more
    used tag join it (tags-tacos.md §2.3: the first level groups synonyms, embedding-only, at the
    cosine near 0.9 that MIG uses for its label graph).

    Leader clustering in order of use (rows, then label): a tag joins the most similar earlier
    leader it reaches at `threshold`, else it leads a concept of its own. Every member is that
    similar to its concept's label, so a concept cannot drift along a chain of near neighbours as
    single-linkage grouping would. Exact (faiss range search); returns the leader label per tag.
    """
    import faiss

    n = len(labels)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-float(rows[i]), labels[i]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    vecs = np.ascontiguousarray(_normalize(np.asarray(vectors, dtype=np.float32)))
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    lims, sims, ids = index.range_search(vecs, float(threshold) - 1e-6)
    leader = np.full(n, -1, dtype=np.int64)
    for i in order:
        near, sim = ids[lims[i] : lims[i + 1]], sims[lims[i] : lims[i + 1]]
        ok = (rank[near] < rank[i]) & (leader[near] == near)  # earlier tags that lead a concept
        leader[i] = int(near[ok][np.argmax(sim[ok])]) if ok.any() else i
    return [labels[j] for j in leader]


def spherical_kmeans(vectors: np.ndarray, k: int, weights: np.ndarray, seed: int, iterations: int) -> np.ndarray:
    """Cluster ids 0..m-1 (m <= k, empty clusters dropped, ids in order of first appearance)."""
    import faiss

    if k >= len(vectors):
        return np.arange(len(vectors))
    if k <= 1:
        return np.zeros(len(vectors), dtype=np.int64)
    km = faiss.Kmeans(vectors.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(np.ascontiguousarray(vectors, dtype=np.float32), weights=np.ascontiguousarray(weights, dtype=np.float32))
    _, assign = km.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    _, relabeled = np.unique(assign[:, 0], return_inverse=True)
    first_seen = {}
    for c in relabeled:
        first_seen.setdefault(int(c), len(first_seen))
    return np.array([first_seen[int(c)] for c in relabeled], dtype=np.int64)


def _normalize(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def build_tree(
    labels: list[str],
    vectors: np.ndarray,
    rows: np.ndarray,
    settings: TreeSettings,
    namer: Callable[[list[list[str]]], list[str | None]] | None = None,
) -> pl.DataFrame:
    """Nodes of the tree over leaves `labels` (with unit `vectors` and row counts `rows`).

    Columns: node_id (root = 0), parent_id, depth (root 0, leaves deepest), level (leaves 0),
    label, is_leaf, n_leaves, leaf_rows (rows summed over leaves; a row with several leaves counts
    for each), member_tags (the leaf labels below), embedding.
    """
    n = len(labels)
    levels_parent: list[np.ndarray] = []  # parent index (into the next level) of each node, per level
    level_vecs = [_normalize(np.asarray(vectors, dtype=np.float32))] if n else []
    level_rows = [np.asarray(rows, dtype=np.float64)] if n else []
    while n and len(level_vecs[-1]) > settings.top and len(level_vecs) < settings.max_depth:
        cur_vecs, cur_rows = level_vecs[-1], level_rows[-1]
        k = math.ceil(len(cur_vecs) / settings.branching)
        assign = spherical_kmeans(cur_vecs, k, np.maximum(cur_rows, 1.0), settings.seed + len(level_vecs), settings.kmeans_iterations)
        m = int(assign.max()) + 1
        if m >= len(cur_vecs):
            break
        sums = np.zeros((m, cur_vecs.shape[1]), dtype=np.float64)
        np.add.at(sums, assign, cur_vecs * np.maximum(cur_rows, 1.0)[:, None])
        levels_parent.append(assign)
        level_vecs.append(_normalize(sums.astype(np.float32)))
        level_rows.append(np.bincount(assign, weights=cur_rows, minlength=m))

    # Number nodes top-down: root 0, then each level from the top, so ids read like a preorder by level.
    n_levels = len(level_vecs)
    offsets, next_id = {}, 1
    for lvl in range(n_levels - 1, -1, -1):
        offsets[lvl] = next_id
        next_id += len(level_vecs[lvl])
    members: list[list[int]] = [list(range(n))] if n else [[]]
    level_members = [[[i] for i in range(n)]]
    for assign in levels_parent:
        grouped: list[list[int]] = [[] for _ in range(int(assign.max()) + 1)]
        for child, parent in enumerate(assign):
            grouped[parent].extend(level_members[-1][child])
        level_members.append(grouped)

    node_id, parent_id, depth, level, label, is_leaf, n_leaves, leaf_rows, member_tags, embedding = ([] for _ in range(10))
    rows_arr = np.asarray(rows, dtype=np.float64)
    order_labels = lambda leaf_ids: [labels[i] for i in sorted(leaf_ids, key=lambda i: (-rows_arr[i], labels[i]))]
    dim = level_vecs[0].shape[1] if n else 0
    node_id.append(ROOT), parent_id.append(None), depth.append(0), level.append(n_levels), label.append("ROOT"), is_leaf.append(False)
    n_leaves.append(n), leaf_rows.append(float(rows_arr.sum())), member_tags.append(order_labels(members[0]))
    embedding.append(_normalize(level_vecs[-1].sum(axis=0, keepdims=True))[0] if n else np.zeros(dim, dtype=np.float32))
    for lvl in range(n_levels - 1, -1, -1):
        for i, vec in enumerate(level_vecs[lvl]):
            node_id.append(offsets[lvl] + i)
            parent_id.append(ROOT if lvl == n_levels - 1 else offsets[lvl + 1] + int(levels_parent[lvl][i]))
            depth.append(n_levels - lvl)
            level.append(lvl)
            leaf_ids = level_members[lvl][i]
            tags = order_labels(leaf_ids)
            label.append(labels[i] if lvl == 0 else " / ".join(tags[:2]) + (" …" if len(tags) > 2 else ""))
            is_leaf.append(lvl == 0)
            n_leaves.append(len(leaf_ids))
            leaf_rows.append(float(level_rows[lvl][i]))
            member_tags.append(tags)
            embedding.append(vec)
    nodes = pl.DataFrame(
        {
            "node_id": node_id, "parent_id": parent_id, "depth": depth, "level": level, "label": label, "is_leaf": is_leaf,
            "n_leaves": n_leaves, "leaf_rows": leaf_rows, "member_tags": member_tags,
            "embedding": pl.Series(np.stack(embedding).astype(np.float32), dtype=pl.Array(pl.Float32, max(dim, 1))) if dim else [[0.0]] * len(node_id),
        },
        schema_overrides={"parent_id": pl.Int64, "depth": pl.Int32, "level": pl.Int32},
    )
    if namer is not None:
        nodes = name_internal_nodes(nodes, namer)
    return nodes


def name_internal_nodes(nodes: pl.DataFrame, namer: Callable[[list[list[str]]], list[str | None]]) -> pl.DataFrame:
    """Replace the labels of internal nodes (not the root) with names from `namer`, given each
    node's children labels (at most 10, most rows first); a None keeps the embedding-based label."""
    # Name from the bottom up so that parents see their children's new names.
    labels = dict(zip(nodes["node_id"], nodes["label"]))
    levels = sorted(set(nodes.filter(~pl.col("is_leaf") & (pl.col("node_id") != ROOT))["level"].to_list()))
    child_ids = (
        nodes.filter(pl.col("parent_id").is_not_null()).sort(["parent_id", "leaf_rows"], descending=[False, True])
        .group_by("parent_id", maintain_order=True).agg(pl.col("node_id").head(10))
    )
    kids = dict(zip(child_ids["parent_id"], child_ids["node_id"]))
    for lvl in levels:
        ids = nodes.filter((pl.col("level") == lvl) & ~pl.col("is_leaf") & (pl.col("node_id") != ROOT))["node_id"].to_list()
        names = namer([[labels[c] for c in kids.get(i, [])] for i in ids])
        for i, name in zip(ids, names):
            if name:
                labels[i] = name
    return nodes.with_columns(pl.col("node_id").replace_strict(labels, return_dtype=pl.String).alias("label"))


def ground_rows(row_tags: pl.DataFrame, nodes: pl.DataFrame, column: str = "tree_tags") -> pl.DataFrame:
    """Row-to-leaf memberships: (row_id, node_id, weight = 1 / number of the row's leaves)."""
    leaves = nodes.filter(pl.col("is_leaf")).select(pl.col("label").alias("tag"), "node_id")
    pairs = row_tags.select("row_id", pl.col(column).alias("tag")).explode("tag").drop_nulls("tag").join(leaves, on="tag")
    return pairs.select("row_id", "node_id").unique().with_columns((1.0 / pl.len().over("row_id")).alias("weight")).sort("row_id", "node_id")


def ground_vectors(vectors: np.ndarray, nodes: pl.DataFrame, tau: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Nearest leaf for each vector (node ids and cosines); below `tau`, the nearest internal node."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    leaves = nodes.filter(pl.col("is_leaf"))
    internal = nodes.filter(~pl.col("is_leaf") & (pl.col("node_id") != ROOT))
    out_ids = np.full(len(vectors), -1, dtype=np.int64)
    out_sims = np.full(len(vectors), -1.0, dtype=np.float32)
    if len(vectors) == 0 or leaves.is_empty():
        return out_ids, out_sims
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(leaves["embedding"].to_numpy(), dtype=np.float32))
    sims, idx = index.search(vectors, 1)
    out_ids[:] = leaves["node_id"].to_numpy()[idx[:, 0]]
    out_sims[:] = sims[:, 0]
    low = out_sims < tau
    if low.any() and not internal.is_empty():
        inner = faiss.IndexFlatIP(vectors.shape[1])
        inner.add(np.ascontiguousarray(internal["embedding"].to_numpy(), dtype=np.float32))
        s2, i2 = inner.search(vectors[low], 1)
        out_ids[low] = internal["node_id"].to_numpy()[i2[:, 0]]
        out_sims[low] = s2[:, 0]
    return out_ids, out_sims


def ancestors(nodes: pl.DataFrame) -> dict[int, list[int]]:
    """node_id -> path from the top (excluding the root) down to the node itself."""
    parent = dict(zip(nodes["node_id"].to_list(), nodes["parent_id"].to_list()))
    paths: dict[int, list[int]] = {}
    for node in parent:
        path, cur = [], node
        while cur is not None and cur != ROOT:
            path.append(cur)
            cur = parent[cur]
        paths[node] = path[::-1]
    return paths
