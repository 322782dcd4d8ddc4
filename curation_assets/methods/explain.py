"""The reasons table: one row per candidate saying whether a strategy picked it, why, with its
scores and their pool percentiles, its tree path and the nearest already-selected row."""

from __future__ import annotations

import numpy as np
import polars as pl

from curation_assets.methods.plugin import Candidates, Picked, Strategy
from curation_assets.methods.tree import ancestors

SCORE_STRUCT = pl.List(pl.Struct({"name": pl.String, "value": pl.Float64, "percentile": pl.Float64}))
REASON_COLUMNS = {
    "row_id": "Candidate row (a canonical pool row).",
    "selected": "True when the strategy picked the row.",
    "rank": "Pick order, 1 = first; null when not selected.",
    "strategy": "The strategy that decided.",
    "budget_rule": "How the budget was set (share of the candidates, or rows requested).",
    "budget": "Rows the strategy was asked for.",
    "eligible": "False when the method's own rules rule the row out (not the budget).",
    "gain_name": "What `gain` measures for this strategy.",
    "gain": "The value that decided the row's pick; null for rows not picked.",
    "kl_contribution": "TAGS with a target: the pick's KL improvement; null otherwise.",
    "reason": "Why the row was picked or not, in words.",
    "scores": "The row's scores, each with its pool percentile (0-100).",
    "tree_path": "Knowledge-tree paths of the row's leaves (root > ... > leaf), ' | ' between leaves.",
    "canonical_tags": "The row's canonical tags.",
    "nearest_selected": "The most similar row picked before this one (for unpicked rows: picked at all).",
    "nearest_similarity": "Cosine similarity to nearest_selected (the embedder's).",
    "source_file": "File the row came from.",
    "source_row": "Record number in that file.",
}


def budget_rule(requested: float, pool: int, budget: int) -> str:
    if requested <= 1:
        return f"{requested:.4g} of {pool:,} candidates = {budget:,} rows"
    return f"{budget:,} rows requested of {pool:,} candidates"


def nearest_selected(embeddings: np.ndarray, order: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the most similar row picked before it (for picked rows) or picked at all."""
    import faiss

    n = len(embeddings)
    nearest, sims = np.full(n, -1, dtype=np.int64), np.full(n, np.nan)
    if not order:
        return nearest, sims
    picked = np.asarray(order)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(np.ascontiguousarray(embeddings[picked], dtype=np.float32))
    rank = np.full(n, np.iinfo(np.int64).max)
    rank[picked] = np.arange(len(picked))
    k = min(len(picked), 64)
    s, idx = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), k)
    earlier = (idx >= 0) & (idx < rank[:, None])  # hits picked before the row (any, for unpicked rows)
    first = earlier.argmax(axis=1)  # hits come most similar first
    has = earlier[np.arange(n), first]
    nearest[has] = picked[idx[has, first[has]]]
    sims[has] = s[has, first[has]]
    return nearest, sims


def percentiles(values: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(values)
    out = np.full(len(values), np.nan)
    if ok.any():
        out[ok] = 100.0 * pl.Series(values[ok]).rank("max").to_numpy() / ok.sum()
    return out


def score_lists(values: dict[str, np.ndarray], n: int) -> pl.Series:
    """Per row, [{name, value, percentile}] for each score the row has (NaN left out), in key order."""
    if not values:
        return pl.Series([[]] * n, dtype=SCORE_STRUCT)
    long = pl.concat([
        pl.DataFrame({"i": np.arange(n), "name": [k] * n, "value": v.astype(np.float64), "percentile": percentiles(v)}) for k, v in values.items()
    ]).filter(pl.col("value").is_not_nan())
    per_row = long.group_by("i", maintain_order=True).agg(pl.struct("name", "value", "percentile").alias("scores"))
    out = pl.DataFrame({"i": np.arange(n)}).join(per_row, on="i", how="left", maintain_order="left")["scores"]
    return out.fill_null(pl.lit([], dtype=SCORE_STRUCT)).cast(SCORE_STRUCT)


def tree_paths(rows: pl.DataFrame, memberships: pl.DataFrame | None, nodes: pl.DataFrame | None) -> list[str | None]:
    if memberships is None or nodes is None or nodes.is_empty():
        return [None] * rows.height
    label = dict(zip(nodes["node_id"], nodes["label"]))
    paths = ancestors(nodes)
    text = {leaf: " > ".join(label[n] for n in paths[leaf]) for leaf in nodes.filter(pl.col("is_leaf"))["node_id"]}
    by_row = memberships.group_by("row_id").agg(pl.col("node_id"))
    lookup = dict(zip(by_row["row_id"], by_row["node_id"]))
    return [" | ".join(text[x] for x in lookup[r]) if r in lookup else None for r in rows["row_id"]]


def explain(c: Candidates, picked: Picked, strategy: Strategy, budget: int, rule: str, score_names: list[str], neighbours: bool = True) -> pl.DataFrame:
    """The reasons table. `score_names` are the pool's score columns to show (those present);
    the strategy's `reports` come from its Picked.extra."""
    n = c.n
    rank = np.full(n, -1, dtype=np.int64)
    rank[picked.order] = np.arange(1, len(picked.order) + 1)
    selected = rank > 0
    values = {k: c.column(k) for k in score_names if k in c.rows.columns}
    values.update({k: np.asarray(picked.extra[k], dtype=np.float64) for k in strategy.reports if k in picked.extra})
    nearest, nearest_sim = (np.full(n, -1), np.full(n, np.nan))
    if neighbours and n and picked.order:
        nearest, nearest_sim = nearest_selected(c.embeddings(), picked.order)
    ids = c.rows["row_id"].to_list()
    reason = [
        (f"selected: rank {rank[i]} of {len(picked.order)}, " + picked.selected_reason.get(i, f"{picked.gain_name} {picked.gain[i]:.4g}"))
        if selected[i] else picked.reason.get(i, "not selected")
        for i in range(n)
    ]
    frame = pl.DataFrame({
        "row_id": ids,
        "selected": selected,
        "rank": pl.Series([int(r) if r > 0 else None for r in rank], dtype=pl.Int64),
        "strategy": [strategy.name] * n,
        "budget_rule": [rule] * n,
        "budget": [budget] * n,
        "eligible": [i not in picked.ineligible for i in range(n)],
        "gain_name": [picked.gain_name] * n,
        "gain": picked.gain,
        "kl_contribution": picked.kl if picked.kl is not None else np.full(n, np.nan),
        "reason": reason,
        "scores": score_lists(values, n),
        "tree_path": tree_paths(c.rows, c.memberships, c.nodes),
        "canonical_tags": c.rows["canonical_tags"] if "canonical_tags" in c.rows.columns else [None] * n,
        "nearest_selected": [ids[j] if j >= 0 else None for j in nearest],
        "nearest_similarity": nearest_sim,
        "source_file": c.rows["source_file"],
        "source_row": c.rows["source_row"],
    }, strict=False)
    if picked.columns:
        frame = frame.with_columns(**{k: pl.Series(v, strict=False) for k, v in picked.columns.items()})
    return frame.with_columns(
        pl.col("tree_path").cast(pl.String), pl.col("canonical_tags").cast(pl.List(pl.String)),  # typed even when no row has a tree or tags
        pl.col("gain").fill_nan(None), pl.col("kl_contribution").fill_nan(None), pl.col("nearest_similarity").fill_nan(None))
