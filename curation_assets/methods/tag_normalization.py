"""Tag normalization (TACOS §1.3, InsTag §3 of research/tags-tacos.md).

Steps, in order:
1. Rule aggregation: lowercase, punctuation runs to a space, stem every word with the Snowball
   (Porter2) English stemmer; symbols that carry meaning stay ("C++", "C#", ".NET"). TACOS applies
   NLTK's Porter stemmer to the whole phrase, which stems only its last word, keeps a trailing space
   after stripped punctuation and merges "General"/"Generation"; `stem="phrase"` reproduces that.
2. Frequency filter: drop tags used by fewer than `alpha` rows (TACOS: 20), counted after the rules.
   `count_on="raw"` is TACOS's count (tag_cluster.py `count_tag_frequency`): occurrences of each raw
   string before the rules, so "Math" and "math" count apart and a tag a tagger repeats inside one
   answer counts twice; K-means then weights each tag by its occurrences, as TACOS embeds every one.
3. Semantic aggregation (InsTag): tags whose embeddings have cosine >= `merge_threshold` (0.95, i.e.
   DBSCAN with eps 0.05 on cosine distance and min_samples 1) join one canonical tag, the most
   frequent of the group. Exact: connected components of the thresholded similarity graph.
4. Association aggregation (InsTag, optional, off by default as in TACOS's released subsets): when
   tag A occurs in at least `min_support` rows and B accompanies it in >= `min_confidence` of them,
   A and B merge (transitively).
5. Clustering (TACOS): K-means with K = `n_clusters` (50) over the canonical tags, each weighted by
   its row count (occurrences with count_on="raw"; equivalent to TACOS embedding every occurrence),
   seeded. Each row gets the sorted set of its tags' clusters (`clusters`, which names its label
   set) and the same clusters in the order of its tags (`clusters_in_tag_order`): TACOS's cluster map
   (tag_process.py) visits a row's tags in order, and that order decides which of two clusters comes
   first, so which of two equal-sized clusters its budget visits first.
6. Label-set dedup (TACOS): among rows with the same cluster set, the one with the longest response
   (the first in pool order on a tie) represents the set.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

_KEEP_SYMBOLS = re.compile(r"(?i)(?<![\w])(c\+\+|c#|f#|\.net|node\.js)(?![\w])")
_NON_WORD = re.compile(r"\W+")
# What normalize_tags computes; part of the normalized_tags code version.
VERSION = "2"  # 2: count_on="raw" counts occurrences (TACOS); clusters_in_tag_order


@dataclass(frozen=True)
class NormalizationSettings:
    alpha: int = 20
    count_on: str = "normalized"  # or "raw" (TACOS)
    stem: str = "word"  # or "phrase" (TACOS) or "none"
    merge_threshold: float | None = 0.95
    association: bool = False
    min_support: int = 40
    min_confidence: float = 0.99
    n_clusters: int = 50
    embed_text: str = "surface"  # embed the most common surface form, or "normalized" (the stemmed key)
    seed: int = 0
    tree_min_rows: int = 2  # TAGS leaves keep the long tail: a tag used by this many rows (tags-tacos.md §2.2)


@lru_cache(maxsize=1)
def _porter():
    from nltk.stem import PorterStemmer

    return PorterStemmer()


@lru_cache(maxsize=1)
def _snowball():
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer("english")


def rule_normalize(tag: str, stem: str = "word") -> str:
    """Lowercase, punctuation to spaces, per-word stemming; meaningful symbols such as C++ are kept.

    stem="phrase" is TACOS's rule exactly, bugs included; stem="none" skips stemming.
    """
    if stem == "phrase":
        return _porter().stem(_NON_WORD.sub(" ", tag.lower()))
    text = tag.lower()
    keep: dict[str, str] = {}

    def protect(match: re.Match) -> str:
        placeholder = f"keepsym{len(keep)}x"
        keep[placeholder] = match.group(1)
        return f" {placeholder} "

    text = _KEEP_SYMBOLS.sub(protect, text)
    words = _NON_WORD.sub(" ", text).split()
    if stem == "word":
        words = [w if w in keep else _snowball().stem(w) for w in words]
    return " ".join(keep.get(w, w) for w in words)


def _components(edges_i: np.ndarray, edges_j: np.ndarray, n: int) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(edges_i), dtype=np.int8), (edges_i, edges_j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def similar_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) with cosine >= threshold, exactly, with faiss range search."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    lims, _, ids = index.range_search(vectors, float(threshold) - 1e-6)
    rows = np.repeat(np.arange(len(vectors)), np.diff(lims).astype(np.int64))
    return rows, ids.astype(np.int64)


def _canonical_of_groups(keys: list[str], counts: np.ndarray, groups: np.ndarray) -> list[str]:
    """Each key's group representative: the most used key of its group (alphabetical on ties)."""
    counts = np.asarray(counts, dtype=np.int64)
    order = sorted(range(len(keys)), key=lambda i: (groups[i], -counts[i], keys[i]))
    best: dict[int, str] = {}
    for i in order:
        best.setdefault(int(groups[i]), keys[i])
    return [best[int(g)] for g in groups]


def _association_groups(row_sets: list[list[int]], n: int, counts: np.ndarray, min_support: int, min_confidence: float) -> np.ndarray:
    """Groups of tags that (nearly) always occur together: A->B when count(A) >= min_support and
    count(A and B) / count(A) >= min_confidence. Pairwise rules, merged transitively."""
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(s) for s in row_sets])
    indices = np.fromiter((t for s in row_sets for t in s), dtype=np.int64, count=int(indptr[-1]))
    x = csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(row_sets), n))
    co = (x.T @ x).tocoo()
    a, b, both = co.row, co.col, co.data
    rule = (a != b) & (counts[a] >= min_support) & (both / np.maximum(counts[a], 1) >= min_confidence)
    return _components(a[rule], b[rule], n)


def normalize_tags(
    rows: pl.DataFrame,
    encode: Callable[[list[str]], np.ndarray],
    settings: NormalizationSettings,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Normalize the raw tags of `rows` (row_id, raw_tags: list[str], response_chars, pool_order).

    Returns (per-row table, tag vocabulary). Per row: canonical_tags (readable labels), tree_tags (the
    TAGS leaves: canonical tags plus rarer tags used by tree_min_rows rows), clusters (sorted),
    clusters_in_tag_order (by each cluster's first tag in the row), labelset_representative,
    labelset_first_seen (pool position of the first row with that cluster set; TACOS orders cluster
    members by it). Vocabulary: one line per raw tag with its normalized key
    (and the `stem` rule that made it), canonical tag, cluster, tree leaf, counts (raw_count: rows, or
    occurrences with count_on="raw"; count: rows of the normalized key) and, for tags
    dropped by the frequency filter, the reason.
    """
    raw_mode = settings.count_on == "raw"
    # Every tag occurrence with its place in the row's list (repeats kept: TACOS counts them).
    occurrences = (
        rows.select("row_id", pl.col("raw_tags").alias("raw_tag"), pl.int_ranges(pl.col("raw_tags").list.len()).alias("tag_pos"))
        .explode(["raw_tag", "tag_pos"]).drop_nulls("raw_tag")
    )
    raw_counts = occurrences.group_by("raw_tag").agg((pl.len() if raw_mode else pl.col("row_id").n_unique()).alias("raw_count"))
    raw_counts = raw_counts.with_columns(
        pl.col("raw_tag").map_elements(lambda t: rule_normalize(t, settings.stem), return_dtype=pl.String).alias("normalized")
    )
    pairs = occurrences.join(raw_counts.select("raw_tag", "normalized", "raw_count"), on="raw_tag")
    all_pairs = pairs
    if raw_mode:
        pairs = pairs.filter(pl.col("raw_count") >= settings.alpha)
    # One line per (row, normalized key): where the key first appears in the row, and how often.
    norm = (
        pairs.filter(pl.col("normalized") != "").group_by("row_id", "normalized")
        .agg(pl.col("tag_pos").min().alias("first_pos"), pl.len().alias("occurrences"))
    )
    counts = norm.group_by("normalized").agg(pl.len().alias("count"))
    kept = counts.filter(pl.col("count") >= settings.alpha) if settings.count_on == "normalized" else counts
    kept = kept.sort("normalized")
    keys = kept["normalized"].to_list()
    key_counts = kept["count"].to_numpy()
    # Readable label of a normalized key: its most used raw spelling.
    surface = (
        raw_counts.sort(["raw_count", "raw_tag"], descending=[True, False]).group_by("normalized", maintain_order=True).first()
        .select("normalized", pl.col("raw_tag").alias("label"))
    )
    labels = dict(surface.iter_rows())

    canonical = keys
    vectors = np.zeros((0, 0), dtype=np.float32)
    if keys:
        texts = [labels[k].lower() if settings.embed_text == "surface" else k for k in keys]
        vectors = encode(texts)
        if settings.merge_threshold is not None:
            i, j = similar_pairs(vectors, settings.merge_threshold)
            canonical = _canonical_of_groups(keys, key_counts, _components(i, j, len(keys)))
    key_to_canonical = dict(zip(keys, canonical))

    row_keys = norm.filter(pl.col("normalized").is_in(keys)).with_columns(
        pl.col("normalized").replace_strict(key_to_canonical).alias("canonical")
    )
    if settings.association and keys:
        canon_keys = sorted(set(canonical))
        index = {k: n for n, k in enumerate(canon_keys)}
        sets = row_keys.group_by("row_id").agg(pl.col("canonical").unique())["canonical"].to_list()
        canon_counts = np.zeros(len(canon_keys))
        for s in sets:
            for k in s:
                canon_counts[index[k]] += 1
        groups = _association_groups([[index[k] for k in s] for s in sets], len(canon_keys), canon_counts, settings.min_support, settings.min_confidence)
        merged = dict(zip(canon_keys, _canonical_of_groups(canon_keys, canon_counts, groups)))
        key_to_canonical = {k: merged[c] for k, c in key_to_canonical.items()}
        row_keys = row_keys.with_columns(pl.col("normalized").replace_strict(key_to_canonical).alias("canonical"))

    # K-means over canonical tags weighted by how many rows use them (raw: how often they occur).
    weight = pl.col("occurrences").sum() if raw_mode else pl.col("row_id").n_unique()
    canon_counts_df = row_keys.group_by("canonical").agg(weight.alias("rows")).sort("canonical")
    canon_list = canon_counts_df["canonical"].to_list()
    cluster_of: dict[str, int] = {}
    if canon_list:
        position = {k: n for n, k in enumerate(keys)}
        canon_vectors = vectors[[position[c] for c in canon_list]]
        k = min(settings.n_clusters, len(canon_list))
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, random_state=settings.seed, n_init="auto")
        assigned = km.fit_predict(canon_vectors, sample_weight=canon_counts_df["rows"].to_numpy().astype(np.float64))
        cluster_of = dict(zip(canon_list, (int(c) for c in assigned)))

    per_row = (
        row_keys.with_columns(
            pl.col("canonical").replace_strict(labels).alias("canonical_tag"),
            pl.col("canonical").replace_strict(cluster_of, return_dtype=pl.Int32).alias("cluster"),
        )
        .group_by("row_id")
        .agg(
            pl.col("canonical_tag").unique().sort().alias("canonical_tags"),
            pl.col("cluster").unique().sort().alias("clusters"),
            pl.col("cluster").sort_by("first_pos").unique(maintain_order=True).alias("clusters_in_tag_order"),
        )
        # Typed even when alpha drops every tag (an empty frame would infer other dtypes).
        .cast({"canonical_tags": pl.List(pl.String), "clusters": pl.List(pl.Int32), "clusters_in_tag_order": pl.List(pl.Int32)})
    )
    out = (
        rows.select("row_id", pl.col("raw_tags"), "response_chars", "pool_order")
        .join(per_row, on="row_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("canonical_tags").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            pl.col("clusters").fill_null(pl.lit([], dtype=pl.List(pl.Int32))),
            pl.col("clusters_in_tag_order").fill_null(pl.lit([], dtype=pl.List(pl.Int32))),
        )
    )
    # TACOS dedup: one row per cluster set, the longest response, the first in pool order on ties.
    keyed = out.with_row_index("_i").with_columns(pl.col("clusters").cast(pl.List(pl.String)).list.join(",").alias("_set"))
    firsts = (
        keyed.filter(pl.col("clusters").list.len() > 0)
        .sort(["_set", "response_chars", "pool_order"], descending=[False, True, False])
        .unique("_set", keep="first", maintain_order=True)["_i"]
    )
    out = keyed.with_columns(
        pl.col("_i").is_in(firsts.implode()).alias("labelset_representative"),
        pl.when(pl.col("clusters").list.len() > 0).then(pl.col("pool_order").min().over("_set")).alias("labelset_first_seen"),
        pl.col("canonical_tags").list.len().alias("n_canonical"),
    ).drop("_i", "_set")

    # TAGS leaves (tags-tacos.md §2.2): fine-grained concepts are long-tailed, so the tree keeps every
    # tag used by tree_min_rows rows: its canonical tag where it passed alpha, else its own label.
    by_key = all_pairs.filter(pl.col("normalized") != "").select("row_id", "normalized").unique()
    tree_rows = by_key.group_by("normalized").agg(pl.len().alias("rows"))
    tree_label = {
        k: labels[key_to_canonical.get(k, k)] for k, n in tree_rows.iter_rows() if k in key_to_canonical or n >= settings.tree_min_rows
    }
    tree_tags = (
        by_key.with_columns(pl.col("normalized").replace_strict(tree_label, default=None, return_dtype=pl.String).alias("tag"))
        .drop_nulls("tag").group_by("row_id").agg(pl.col("tag").unique().sort().alias("tree_tags"))
    )
    out = out.join(tree_tags, on="row_id", how="left", maintain_order="left").with_columns(
        pl.col("tree_tags").fill_null(pl.lit([], dtype=pl.List(pl.String)))
    )

    vocabulary = (
        raw_counts.join(counts, on="normalized", how="left")
        .with_columns(
            pl.col("normalized").replace_strict(key_to_canonical, default=None, return_dtype=pl.String).alias("canonical_key"),
        )
        .with_columns(
            pl.col("canonical_key").replace_strict(labels, default=None, return_dtype=pl.String).alias("canonical_tag"),
            pl.col("normalized").replace_strict(tree_label, default=None, return_dtype=pl.String).alias("tree_tag"),
            pl.lit(settings.stem).alias("stem"),
            pl.col("canonical_key").replace_strict(cluster_of, default=None, return_dtype=pl.Int32).alias("cluster"),
            pl.when(pl.col("normalized") == "")
            .then(pl.lit("empty after normalization"))
            .when(pl.col("canonical_key").is_null())
            .then(pl.lit(f"occurs fewer than {settings.alpha} times" if raw_mode else f"used by fewer than {settings.alpha} rows"))
            .alias("dropped_reason"),
        )
        .select("raw_tag", "normalized", "canonical_tag", "cluster", "tree_tag", "raw_count", "count", "dropped_reason", "stem")
        .sort(["count", "raw_tag"], descending=[True, False], nulls_last=True)
    )
    return out.drop("pool_order"), vocabulary
