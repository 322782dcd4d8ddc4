"""selected_subset and selection_reasons: one strategy, chosen in config, picks the training subset
from the whole pool; every candidate gets a row saying why it was or was not picked."""

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.automation import global_refresh, global_table
from curation_assets.methods.export import export_subset
from curation_assets.methods.ingest import IngestOptions, ingest_file, load_options
from curation_assets.methods.selection import instag_metrics, resolve_budget
from curation_assets.methods.strategies import STRATEGIES, Candidates
from curation_assets.methods.tag_normalization import rule_normalize
from curation_assets.methods.tree import ancestors, ground_vectors
from curation_assets.normalized_tags import all_shards, pool_rows, shard_frames
from curation_assets.rowwise import cached_encode
from resources.models import EmbedderResource
from resources.scorer import CausalLMScorerResource
from resources.storage import CurationStorage
from resources.tagger import TaggerResource

SCORE_COLUMNS = ["ifd_ppl", "tshirt_ifd", "avg_noisy_ifd", "ifd_loss", "iterit_ifd", "deita_score", "comparative_score", "avg_noisy_sifd", "std_noisy_sifd"]


class SelectionConfig(dg.Config):
    """The strategy and its settings; defaults follow the research notes (research/*.md)."""

    strategy: str = Field("tags", description=f"One of {sorted(STRATEGIES)}.")
    budget: float = Field(0.05, description="A fraction of the pool (<= 1) or a number of rows (> 1).")
    seed: int = Field(0, description="Seed of the random strategy.")
    # TAGS
    tags_gain: str = Field("exact_lazy", description="tags: exact_lazy (exact gains, CELF) or mig_linear (MIG's first-order gain, every row each step).")
    quality_score: str | None = Field(None, description="tags: score used as quality q(x); null = 1 for every row.")
    quality_transform: str = Field("minmax", description="tags: minmax (the notes' \"scaled to [0,1]\"), percentile (pool rank, robust to outliers) or raw.")
    complexity_factor: bool = Field(False, description="tags: multiply q by 1 + log(1 + leaves) (InsTag complexity).")
    gamma: float = Field(1.0, description="tags: discount of a leaf's mass per level up the tree.")
    level_weights: dict[str, float] = Field({}, description="tags: node weight per depth (default 1).")
    target_file: str | None = Field(None, description="tags: prompts of the target domain, any format raw_pool reads.")
    target_leaves: list[str] = Field([], description="tags: node labels of the target domain (their leaves share the mass).")
    kl_lambda: float = Field(1.0, description="tags: weight of the KL alignment term (after per-step normalization).")
    kl_eps: float = Field(1e-3, description="tags: add-epsilon smoothing of the leaf distributions.")
    kl_backoff: float = Field(0.2, description="tags: share of a target leaf's parent mass spread to its siblings.")
    tau: float = Field(0.75, description="tags: a target tag less similar than this to every leaf grounds on an internal node.")
    # TACOS
    quota_mode: str = Field("equal", description="tacos: equal (TACOS), proportional, sqrt or global.")
    per_cluster: int | None = Field(None, description="tacos: rows per cluster (TACOS: 20); null = budget / clusters.")
    fill_quota: bool = Field(True, description="tacos: give quota small clusters leave unused to the best other rows.")
    tacos_aggregation: str = Field("raw", description="tacos: raw (TACOS: each item's score beside its partner) or bradley_terry (strengths fitted on the implied wins).")
    # T-SHIRT
    tshirt_ratio: float = Field(0.5, description="tshirt: share of tokens kept by the global threshold (k).")
    tshirt_pool_factor: int = Field(2, description="tshirt: the quality stage keeps this x budget rows.")
    # DEITA
    deita_keys: list[str] = Field(["deita_score"], description="deita: scores multiplied into the sort key (DEITA: deita_score, complexity x quality).")
    deita_threshold: float = Field(0.9, description="deita: reject a row whose cosine to a kept row is above this.")
    deita_batch_size: int = Field(1, description="deita: the reference's batch semantics when > 1.")
    # IterIT, Superfiltering, top-k
    iterit_gamma: float = Field(0.1, description="iterit: n-gram weight decay per selected response.")
    iterit_eos: str | None = Field(None, description="iterit: EOS string appended to each response document; null = the scorer tokenizer's.")
    ifd_threshold: float = Field(1.0, description="superfiltering: keep IFD below this.")
    reference_pool_size: int | None = Field(None, description="superfiltering: a rate budget takes int(this x rate) rows, as select_data.py's hard-coded 52002 (Alpaca); null = the rate of the candidates.")
    score: str = Field("ifd_ppl", description="top_k: the score to rank by.")
    descending: bool = Field(True, description="top_k: higher is better.")
    score_below: float | None = Field(None, description="top_k: keep only scores below this.")
    neighbours: bool = Field(True, description="Report each row's nearest already-selected row (embeddings).")


def budget_rule(cfg: SelectionConfig, pool: int, budget: int) -> str:
    if cfg.budget <= 1:
        return f"{cfg.budget:.4g} of {pool:,} candidates = {budget:,} rows"
    return f"{budget:,} rows requested of {pool:,} candidates"


def load_candidates(context, storage: CurationStorage, normalized_tags: pl.DataFrame, comparisons: pl.DataFrame, strategy: str) -> pl.DataFrame:
    """Canonical rows in pool order with their scores, canonical tags, clusters and mean comparative score."""
    pool = pool_rows(shard_frames(context, storage, "raw_pool")).select(
        "row_id", "instruction", "input", "response", "messages", "system_prompt", "source_partition", "source_file", "source_row", "shape"
    ).collect()
    scores = shard_frames(context, storage, "instance_scores")
    if scores is not None:
        # Per-token columns are large: only T-SHIRT reads its noisy copies' token differences.
        heavy = ["tshirt_d"] + ([] if strategy == "tshirt" else ["noisy_d"])
        scores = scores.select(pl.exclude(heavy)).unique("row_id", keep="first")
        pool = pool.join(scores.collect(), on="row_id", how="left", maintain_order="left")
    if normalized_tags is not None and not normalized_tags.is_empty():
        pool = pool.join(normalized_tags.select("row_id", "canonical_tags", "clusters", "labelset_representative"), on="row_id", how="left", maintain_order="left")
    if comparisons is not None and not comparisons.is_empty():
        mean = comparisons.drop_nulls("score").group_by("row_id").agg(pl.col("score").mean().alias("comparative_score"))
        pool = pool.join(mean, on="row_id", how="left", maintain_order="left")
    return pool


def target_leaf_mass(cfg: SelectionConfig, nodes: pl.DataFrame, vocabulary: pl.DataFrame, tagger: TaggerResource, embed, log) -> dict[int, float]:
    """p̂_T over leaves (tags-tacos.md §2.7): each target prompt x gives each node its tags ground
    on 1/|nodes of x| (a node inside the tree shares that over its leaves), summed and divided by
    |D_T|, the prompts with no grounded tag included. A target_leaves list counts as one prompt."""
    leaf_of_label = dict(zip(nodes.filter(pl.col("is_leaf"))["label"], nodes.filter(pl.col("is_leaf"))["node_id"]))
    below = {node: [leaf_of_label[t] for t in members if t in leaf_of_label] for node, members in zip(nodes["node_id"], nodes["member_tags"])}
    target_sets: list[set[int]] = []  # grounded nodes per target prompt
    if cfg.target_leaves:
        label_node = dict(zip(nodes["label"], nodes["node_id"]))
        missing = [t for t in cfg.target_leaves if t not in label_node]
        if missing:
            raise dg.Failure(f"target_leaves not in the tree: {missing[:10]}")
        target_sets.append({label_node[t] for t in cfg.target_leaves})
    if cfg.target_file:
        prompts = read_target_prompts(cfg.target_file)
        results = tagger.tag(prompts)
        stem = vocabulary["stem"][0] if vocabulary.height else "word"
        by_raw = dict(zip(vocabulary["raw_tag"], vocabulary["tree_leaf"]))
        by_key = {k: t for k, t in zip(vocabulary["normalized"], vocabulary["tree_leaf"]) if t is not None}
        leaf_label = {t: by_raw.get(t) or by_key.get(rule_normalize(t, stem)) for r in results for t in (x["tag"] for x in r.value or [])}
        unknown = sorted(t for t, label in leaf_label.items() if label not in leaf_of_label)
        grounded = {}
        if unknown:
            ids, _ = ground_vectors(embed([t.lower() for t in unknown]), nodes, cfg.tau)
            grounded = {t: int(i) for t, i in zip(unknown, ids.tolist()) if i >= 0}

        def node_of(tag: str) -> int | None:
            return leaf_of_label[leaf_label[tag]] if leaf_label[tag] in leaf_of_label else grounded.get(tag)

        target_sets += [{node_of(x["tag"]) for x in r.value or []} - {None} for r in results]
        log(f"target: {len(prompts)} prompts, {len(unknown)} tags outside the tree grounded by similarity")
    mass: dict[int, float] = {}
    for grounded_nodes in target_sets:
        for node in grounded_nodes:
            leaves = below[node] or [node]
            for leaf in leaves:
                mass[leaf] = mass.get(leaf, 0.0) + 1.0 / (len(grounded_nodes) * len(leaves) * len(target_sets))
    if not mass:
        raise dg.Failure("no tag of the target prompts could be grounded on the tree: KL alignment has no target")
    return mass


def read_target_prompts(path: str) -> list[str]:
    """The prompts of a target file in any format raw_pool reads (responses not needed)."""
    import tempfile
    from pathlib import Path

    opts = load_options(path, IngestOptions(allow_empty_response=True))
    with tempfile.TemporaryDirectory() as tmp:
        summary = ingest_file(path, opts, partition="target", source_file=Path(path).name, staging_dir=tmp)
        prompts = [p for part in summary.pool_parts for p in pl.read_parquet(part)["instruction"].to_list()]
    if not prompts:
        raise dg.Failure(f"target file {path} holds no readable prompts")
    return prompts


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


SCORE_STRUCT = pl.List(pl.Struct({"name": pl.String, "value": pl.Float64, "percentile": pl.Float64}))


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


@dg.multi_asset(
    outs={
        "selected_subset": global_table("The selected rows in rank order, with their conversations and sources."),
        "selection_reasons": global_table("One row per candidate: selected or not, rank, scores with percentiles, tree path, gain, reason, nearest selected row."),
    },
    deps=all_shards("raw_pool", "instance_scores"),
    group_name="selection",
)
def selected_subset(
    context: dg.AssetExecutionContext,
    config: SelectionConfig,
    normalized_tags: pl.DataFrame,
    tag_vocabulary: pl.DataFrame,
    knowledge_tree: pl.DataFrame,
    tree_memberships: pl.DataFrame,
    comparative_scores: pl.DataFrame,
    embedder: EmbedderResource,
    tagger: TaggerResource,
    scorer: CausalLMScorerResource,
    storage: CurationStorage,
):
    if config.strategy not in STRATEGIES:
        raise dg.Failure(f"unknown strategy {config.strategy!r}; choose one of {sorted(STRATEGIES)}")
    rows = load_candidates(context, storage, normalized_tags, comparative_scores, config.strategy)
    budget = resolve_budget(config.budget, rows.height) if rows.height else 0
    cache = storage.row_cache("embeddings", embedder.version())
    embed = lambda texts: cached_encode(texts, embedder.encode, cache)  # noqa: E731
    candidates = Candidates(rows, tree_memberships, knowledge_tree, comparative_scores, embed, eos_token=scorer.eos_token)
    if config.strategy == "tags" and (config.target_file or config.target_leaves):
        candidates.target_leaf_mass = target_leaf_mass(config, knowledge_tree, tag_vocabulary, tagger, embed, context.log.info)
    try:
        picked = STRATEGIES[config.strategy](candidates, budget, config)
    except ValueError as exc:
        raise dg.Failure(f"strategy {config.strategy}: {exc}") from exc
    budget = budget if picked.budget is None else picked.budget
    rule = picked.budget_rule or budget_rule(config, rows.height, budget)
    context.log.info(f"{config.strategy}: {len(picked.order)} of {rows.height} rows picked ({rule})")
    reasons = explain(candidates, picked, config, budget, rule, embed)
    subset = (
        reasons.filter(pl.col("selected")).select("row_id", "rank").join(rows, on="row_id").sort("rank")
        .select("row_id", "rank", "system_prompt", "messages", "instruction", "input", "response", "source_file", "source_row", "source_partition")
        .with_columns(pl.lit(config.strategy).alias("strategy"))
    )
    yield dg.Output(subset, "selected_subset", metadata={**_subset_metadata(subset, reasons, candidates, config, rule), **picked.summary})
    yield dg.Output(reasons, "selection_reasons", metadata=_reasons_metadata(reasons))


def explain(c: Candidates, picked, cfg: SelectionConfig, budget: int, rule: str, embed) -> pl.DataFrame:
    n = c.n
    rank = np.full(n, -1, dtype=np.int64)
    rank[picked.order] = np.arange(1, len(picked.order) + 1)
    selected = rank > 0
    values = {k: c.column(k) for k in SCORE_COLUMNS if k in c.rows.columns}
    values.update({k: v for k, v in picked.extra.items() if k in SCORE_COLUMNS})
    score_structs = score_lists(values, n)
    nearest, nearest_sim = (np.full(n, -1), np.full(n, np.nan))
    if cfg.neighbours and n and picked.order:
        nearest, nearest_sim = nearest_selected(c.embeddings(), picked.order)
    ids = c.rows["row_id"].to_list()
    reason = [
        f"selected: rank {rank[i]} of {len(picked.order)}, {picked.gain_name} {picked.gain[i]:.4g}" if selected[i] else picked.reason.get(i, "not selected")
        for i in range(n)
    ]
    frame = pl.DataFrame({
        "row_id": ids,
        "selected": selected,
        "rank": pl.Series([int(r) if r > 0 else None for r in rank], dtype=pl.Int64),
        "strategy": [cfg.strategy] * n,
        "budget_rule": [rule] * n,
        "budget": [budget] * n,
        "eligible": [i not in picked.ineligible for i in range(n)],
        "gain_name": [picked.gain_name] * n,
        "gain": picked.gain,
        "kl_contribution": picked.kl if picked.kl is not None else np.full(n, np.nan),
        "reason": reason,
        "scores": score_structs,
        "tree_path": tree_paths(c.rows, c.memberships, c.nodes),
        "canonical_tags": c.rows["canonical_tags"] if "canonical_tags" in c.rows.columns else [None] * n,
        "nearest_selected": [ids[j] if j >= 0 else None for j in nearest],
        "nearest_similarity": nearest_sim,
        "source_file": c.rows["source_file"],
        "source_row": c.rows["source_row"],
    }, strict=False)
    return frame.with_columns(pl.col("gain").fill_nan(None), pl.col("kl_contribution").fill_nan(None), pl.col("nearest_similarity").fill_nan(None))


def _coverage(reasons: pl.DataFrame, c: Candidates) -> tuple[dict, dg.MetadataValue | None]:
    if c.memberships is None or c.nodes is None or c.nodes.is_empty():
        return {}, None
    chosen = set(reasons.filter(pl.col("selected"))["row_id"])
    m = c.memberships.filter(pl.col("row_id").is_in(c.rows["row_id"].implode()))
    leaves_pool = m["node_id"].n_unique()
    leaves_subset = m.filter(pl.col("row_id").is_in(list(chosen)))["node_id"].n_unique()
    top = {n: n for n in c.nodes.filter(pl.col("depth") == 1)["node_id"]}
    paths = ancestors(c.nodes)
    top_of = {leaf: (paths[leaf][0] if paths[leaf] else leaf) for leaf in c.nodes.filter(pl.col("is_leaf"))["node_id"]}
    share = m.with_columns(pl.col("node_id").replace_strict(top_of, default=None).alias("top")).with_columns(pl.col("row_id").is_in(list(chosen)).alias("chosen"))
    pool_share = share.group_by("top").agg(pl.col("weight").sum().alias("pool"))
    sub_share = share.filter(pl.col("chosen")).group_by("top").agg(pl.col("weight").sum().alias("subset"))
    table = pool_share.join(sub_share, on="top", how="left").fill_null(0).with_columns(pl.col("pool") / pl.col("pool").sum(), pl.col("subset") / pl.col("subset").sum().clip(1e-12))
    labels = dict(zip(c.nodes["node_id"], c.nodes["label"]))
    table = table.sort("pool", descending=True).head(20).with_columns(pl.col("top").replace_strict(labels, return_dtype=pl.String).alias("label"))
    fig, ax = ui.new_figure(6.5, max(2.5, 0.3 * table.height + 1))
    y = np.arange(table.height)
    ax.barh(y - 0.2, table["pool"], height=0.4, label="pool")
    ax.barh(y + 0.2, table["subset"], height=0.4, label="subset")
    ax.set_yticks(y, [ui._cell(x, 32) for x in table["label"]])
    ax.invert_yaxis()
    ax.set_xlabel("share of leaf mass")
    ax.set_title("Top-level branches: pool vs subset")
    ax.legend()
    stats = {"leaf_coverage": f"{leaves_subset:,} of {leaves_pool:,} leaves ({100 * leaves_subset / max(leaves_pool, 1):.1f}%)", "top_level_branches": len(top)}
    return stats, ui.png_md(fig, "leaf coverage")


def _subset_metadata(subset: pl.DataFrame, reasons: pl.DataFrame, c: Candidates, cfg: SelectionConfig, rule: str) -> dict:
    stats, picture = _coverage(reasons, c)
    sample = pl.concat([reasons.filter(pl.col("selected")).sort("rank").head(8), reasons.filter(~pl.col("selected")).head(7)])
    meta = {
        "dagster/row_count": subset.height,
        "candidates": c.n,
        "budget": rule,
        "strategy": cfg.strategy,
        "config": dg.MetadataValue.json(cfg.model_dump()),
        "reasons_sample": ui.md(sample.select("row_id", "selected", "rank", "gain", "reason", "tree_path", "nearest_similarity"), 60),
        **stats,
    }
    if "canonical_tags" in c.rows.columns:  # InsTag's complexity (tags per row) and diversity (tag coverage)
        tags = [t or [] for t in c.rows["canonical_tags"].to_list()]
        chosen = reasons.filter(pl.col("selected")).sort("rank")["row_id"]
        position = {r: i for i, r in enumerate(c.rows["row_id"].to_list())}
        measures = instag_metrics(tags, [position[r] for r in chosen])
        meta["tags_per_row"] = round(measures["complexity"], 3)
        meta["tag_coverage"] = f"{100 * measures['tag_coverage']:.1f}% of the pool's canonical tags"
    if picture is not None:
        meta["leaf_coverage_plot"] = picture
    return meta


def _reasons_metadata(reasons: pl.DataFrame) -> dict:
    not_selected = reasons.filter(~pl.col("selected")).with_columns(pl.col("reason").str.split(":").list.first().alias("why"))
    return {
        "dagster/row_count": reasons.height,
        "selected": int(reasons["selected"].sum()),
        "not_selected_by_reason": ui.md(not_selected.group_by("why").len().sort("len", descending=True).head(10)),
    }


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec("budget_met", asset="selected_subset", additional_deps=["selection_reasons"], blocking=True, description="As many rows as the budget, or every eligible row when fewer."),
        dg.AssetCheckSpec("no_duplicates", asset="selected_subset", additional_deps=["selection_reasons"], blocking=True, description="Each row and each conversation at most once."),
        dg.AssetCheckSpec("traceable_to_source", asset="selected_subset", additional_deps=["selection_reasons"], blocking=True, description="Every selected row is a stored pool row with its source file and row."),
        dg.AssetCheckSpec("coverage", asset="selected_subset", additional_deps=["selection_reasons"], description="Tree leaves and tag clusters the subset covers."),
    ],
    ins={"selected_subset": dg.AssetIn("selected_subset"), "selection_reasons": dg.AssetIn("selection_reasons")},
)
def selected_subset_checks(context: dg.AssetCheckExecutionContext, selected_subset: pl.DataFrame, selection_reasons: pl.DataFrame, storage: CurationStorage):
    n_selected = selected_subset.height
    budget = int(selection_reasons["budget"][0]) if selection_reasons.height else 0
    eligible = int(selection_reasons["eligible"].sum())
    yield dg.AssetCheckResult(check_name="budget_met", passed=n_selected == min(budget, eligible),
                              metadata={"selected": n_selected, "budget": budget, "eligible_rows": eligible})
    dup_rows = n_selected - selected_subset["row_id"].n_unique()
    yield dg.AssetCheckResult(check_name="no_duplicates", passed=dup_rows == 0, metadata={"duplicate_rows": dup_rows})
    pool = shard_frames(context, storage, "raw_pool")
    known = pool.select("row_id", "source_file", "source_row").collect() if pool is not None else pl.DataFrame(schema={"row_id": pl.String, "source_file": pl.String, "source_row": pl.Int64})
    traced = selected_subset.join(known, on=["row_id", "source_file", "source_row"], how="semi").height
    yield dg.AssetCheckResult(check_name="traceable_to_source", passed=traced == n_selected, metadata={"untraceable": n_selected - traced})
    chosen = selection_reasons.filter(pl.col("selected"))
    leaves = chosen["tree_path"].drop_nulls().str.split(" | ").explode().n_unique()
    pool_leaves = selection_reasons["tree_path"].drop_nulls().str.split(" | ").explode().n_unique()
    yield dg.AssetCheckResult(check_name="coverage", passed=n_selected == 0 or leaves > 0 or pool_leaves == 0,
                              metadata={"leaf_paths_covered": leaves, "leaf_paths_in_pool": pool_leaves, "share": leaves / max(pool_leaves, 1)})


@dg.asset(
    group_name="selection",
    kinds={"json", "parquet"},
    automation_condition=global_refresh(),
    description="The subset as Alpaca JSON, ShareGPT JSON, OpenAI-messages JSON Lines and Parquet, ready for TRL, LLaMA-Factory and Axolotl.",
)
def subset_export(selected_subset: pl.DataFrame, storage: CurationStorage) -> dg.MaterializeResult:
    written = export_subset(selected_subset, storage.exports / "selected_subset")
    return dg.MaterializeResult(metadata={"rows": selected_subset.height, **{fmt: dg.MetadataValue.path(str(path)) for fmt, path in written.items()}})
