"""selected_subset and selection_reasons: one registered strategy (methods/registry.py), chosen in
config, picks the training subset from the whole pool; every candidate gets a row saying why it
was or was not picked."""

from typing import Union

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field, create_model

from curation_assets import targeted_inputs, ui
from curation_assets.automation import global_refresh, global_table
from curation_assets.method_config import strategy_config_class
from curation_assets.methods.explain import REASON_COLUMNS, budget_rule, explain
from curation_assets.methods.export import export_subset
from curation_assets.methods.fileio import atomic_path
from curation_assets.methods.plugin import Budget, Candidates, Strategy, version_hash
from curation_assets.methods.registry import STRATEGIES, offered_scores
from curation_assets.methods.selection import instag_metrics, resolve_budget
from curation_assets.methods.tree import ancestors
from curation_assets.rowwise import cached_encode
from curation_assets.shards import all_shards, load_candidates, shard_frames, skipped_shards
from resources.models import EmbedderResource
from resources.scorer import CausalLMScorerResource
from resources.storage import CurationStorage
from resources.tagger import TaggerResource
from resources.target_model import TargetModelResource

DEFAULT_STRATEGY = "tags"
COMMON_KEYS = ("budget", "neighbours")  # settings of the selection itself, outside any strategy's


def config_class(strategies: dict[str, Strategy] | None = None) -> type[dg.Config]:
    """selected_subset's run config: `budget`, `neighbours` and `strategy: {<name>: {settings}}`,
    one typed settings class per registered strategy (a discriminated union on `strategy`)."""
    strategies = STRATEGIES if strategies is None else strategies
    members = {name: strategy_config_class(s) for name, s in strategies.items()}
    default = members[DEFAULT_STRATEGY] if DEFAULT_STRATEGY in members else next(iter(members.values()))
    return create_model(
        "SelectionConfig",
        __base__=dg.Config,
        __doc__="The strategy and its settings; defaults follow the research notes (research/*.md).",
        budget=(float, Field(0.05, description="A fraction of the pool (<= 1) or a number of rows (> 1).")),
        neighbours=(bool, Field(True, description="Report each row's nearest already-selected row (embeddings).")),
        strategy=(Union[tuple(members.values())], Field(default(), discriminator="strategy", description="One of " + ", ".join(members) + ", with its settings.")),
    )


SelectionConfig = config_class()


def nested_config(flat: dict, strategies: dict[str, Strategy] | None = None) -> dict:
    """The run config of the earlier flat form (`strategy: tags`, `budget: 0.1`, `tags_gain: ...`
    side by side) in the nested form `strategy: {tags: {tags_gain: ...}}`. Keys of other
    strategies are dropped (they never had an effect); a key of no strategy is an error."""
    strategies = STRATEGIES if strategies is None else strategies
    if not isinstance(flat.get("strategy", DEFAULT_STRATEGY), str):
        return flat
    name = flat.get("strategy", DEFAULT_STRATEGY)
    if name not in strategies:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(strategies)}")
    own = strategies[name].settings.model_fields
    known = set(COMMON_KEYS) | {"strategy"} | {k for s in strategies.values() for k in s.settings.model_fields}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"selected_subset: unknown settings {unknown} (strategy {name!r} takes {sorted(own)})")
    settings = {k: v for k, v in flat.items() if k in own}
    return {**{k: flat[k] for k in COMMON_KEYS if k in flat}, "strategy": {name: settings}}


def strategy_settings(strategy: Strategy, config) -> object:
    return strategy.settings.model_validate(config.strategy.model_dump(exclude={"strategy"}))


def code_version(config: dict | None = None, strategies: dict[str, Strategy] | None = None) -> str:
    """Dagster's code version of selected_subset for this run config: the strategy's VERSION and
    settings and the budget (changed scores make it stale through instance_scores itself)."""
    strategies = STRATEGIES if strategies is None else strategies
    cfg = config_class(strategies).model_validate(nested_config(config or {}, strategies))
    strategy = strategies[cfg.strategy.strategy]
    return version_hash(strategy.settings_key(strategy_settings(strategy, cfg)), cfg.budget, cfg.neighbours)


def needed_assets(config: dict | None = None, strategies: dict[str, Strategy] | None = None) -> frozenset[str]:
    """The optional assets (query_set, warmup_adapter, gradient_store) that the strategy of this
    run config reads; none for the strategies that are not targeted."""
    strategies = STRATEGIES if strategies is None else strategies
    cfg = config_class(strategies).model_validate(nested_config(config or {}, strategies))
    strategy = strategies[cfg.strategy.strategy]
    return strategy.needed_assets(strategy_settings(strategy, cfg))


SUBSET_COLUMNS = {
    "row_id": "Canonical pool row.",
    "rank": "Pick order, 1 = first.",
    "system_prompt": "System prompt, if any.",
    "messages": "The conversation as role/content turns.",
    "instruction": "First user turn.",
    "input": "Alpaca input field; empty for other shapes.",
    "response": "Last assistant turn.",
    "source_file": "File the row came from.",
    "source_row": "Record number in that file.",
    "source_partition": "Landed file version (partition key).",
    "strategy": "The strategy that picked it.",
}


def build_asset(config: dict | None = None, strategies: dict[str, Strategy] | None = None) -> dg.AssetsDefinition:
    """The selected_subset multi-asset over `strategies` (default: the registry as it is now), its
    code version computed from `config` (the project's run config for selected_subset)."""
    strategies = dict(STRATEGIES if strategies is None else strategies)
    Config = config_class(strategies)
    extra_columns = {name: text for st in strategies.values() for name, text in st.columns.items()}

    @dg.multi_asset(
        name="selected_subset",
        outs={
            "selected_subset": global_table("The selected rows in rank order, with their conversations and sources.", {**SUBSET_COLUMNS, **extra_columns}),
            "selection_reasons": global_table("One row per candidate: selected or not, rank, scores with percentiles, tree path, gain, reason, nearest selected row.",
                                              {**REASON_COLUMNS, **extra_columns}),
        },
        # gradient_store, query_set and warmup_adapter: read only by the targeted strategies (their
        # absence holds back no other strategy's refresh: definitions.automate ignores them).
        deps=[*all_shards("raw_pool", "instance_scores", "gradient_store"), "query_set", "warmup_adapter"],
        group_name="selection",
        code_version=code_version(config, strategies),
    )
    def selected_subset(
        context: dg.AssetExecutionContext,
        config: Config,
        normalized_tags: pl.DataFrame,
        tag_vocabulary: pl.DataFrame,
        knowledge_tree: pl.DataFrame,
        tree_memberships: pl.DataFrame,
        comparative_scores: pl.DataFrame,
        embedder: EmbedderResource,
        tagger: TaggerResource,
        scorer: CausalLMScorerResource,
        target_model: TargetModelResource,
        storage: CurationStorage,
    ):
        strategy = strategies[config.strategy.strategy]
        settings = strategy_settings(strategy, config)
        rows = load_candidates(context, storage, normalized_tags, comparative_scores, strategy)
        try:
            budget = Budget(resolve_budget(config.budget, rows.height) if rows.height else 0, config.budget, rows.height)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from exc
        cache = storage.row_cache("embeddings", embedder.version(), context.log.warning)
        embed = lambda texts: cached_encode(texts, embedder.encode, cache)  # noqa: E731
        candidates = Candidates(rows, tree_memberships, knowledge_tree, comparative_scores, tag_vocabulary, embed, tagger.tag, scorer.eos_token, context.log.info,
                                targeted=targeted_inputs.provider(context, storage, rows, embedder, target_model))
        try:
            picked = strategy.pick(candidates, budget, settings)
        except ValueError as exc:
            raise dg.Failure(f"strategy {strategy.name}: {exc}") from exc
        n_budget = budget.rows if picked.budget is None else picked.budget
        rule = picked.budget_rule or budget_rule(config.budget, rows.height, n_budget)
        context.log.info(f"{strategy.name}: {len(picked.order)} of {rows.height} rows picked ({rule})")
        reasons = explain(candidates, picked, strategy, n_budget, rule, offered_scores() + ["comparative_score"], config.neighbours)
        subset = (
            reasons.filter(pl.col("selected")).select("row_id", "rank").join(rows, on="row_id").sort("rank")
            .select("row_id", "rank", "system_prompt", "messages", "instruction", "input", "response", "source_file", "source_row", "source_partition")
            .with_columns(pl.lit(strategy.name).alias("strategy"))
        )
        if picked.subset_columns:
            subset = subset.join(reasons.select("row_id", *picked.subset_columns), on="row_id", how="left", maintain_order="left")
        meta = {**_subset_metadata(subset, reasons, candidates, config, strategy, rule), **_score_distributions(reasons, settings), **picked.summary,
                "skipped_shards": dg.MetadataValue.json(skipped_shards(context))}
        if "nearest_task" in reasons.columns:  # a targeted strategy: per-task similarity, pool vs subset
            meta.update(targeted_inputs.task_metadata(reasons))
        yield dg.Output(subset, "selected_subset", metadata=meta)
        yield dg.Output(reasons, "selection_reasons", metadata=_reasons_metadata(reasons))

    return selected_subset


selected_subset = build_asset()


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
    stats = {"leaf_coverage": f"{leaves_subset:,} of {leaves_pool:,} leaves ({100 * leaves_subset / max(leaves_pool, 1):.1f}%)", "top_level_branches": len(top),
             "tree_coverage": ui.sunburst(c.nodes, title="Knowledge tree: the subset's coverage", coverage=_node_coverage(share, paths))}
    return stats, ui.png_md(fig, "leaf coverage")


def _node_coverage(share: pl.DataFrame, paths: dict[int, list[int]]) -> dict[int, float]:
    """node_id -> the share of the leaf mass under the node that the subset holds."""
    per_leaf = share.group_by("node_id").agg(pl.col("weight").sum().alias("pool"), (pl.col("weight") * pl.col("chosen")).sum().alias("subset"))
    pool: dict[int, float] = {}
    subset: dict[int, float] = {}
    for leaf, p, q in per_leaf.iter_rows():
        for node in paths.get(leaf, [leaf]):
            pool[node] = pool.get(node, 0.0) + p
            subset[node] = subset.get(node, 0.0) + q
    return {node: subset[node] / pool[node] for node in pool if pool[node] > 0}


def _score_distributions(reasons: pl.DataFrame, settings) -> dict:
    """Pool against subset for what the strategy used: its gain, and every score its settings name."""
    named = {v for v in settings.model_dump(mode="json").values() if isinstance(v, str)}
    long = reasons.select("selected", "scores").explode("scores").drop_nulls("scores").unnest("scores")
    used = sorted(named & set(long["name"].unique().to_list())) if long.height else []
    meta = {}
    if reasons["gain"].is_not_null().any():
        gain_name = reasons["gain_name"][0] or "gain"
        gain = reasons.select("selected", pl.col("gain").cast(pl.Float64).fill_null(float("nan")))
        meta["gain_distribution"] = ui.histogram({"pool": gain["gain"].to_numpy(), "subset": gain.filter(pl.col("selected"))["gain"].to_numpy()},
                                                 f"{gain_name}: subset vs pool", gain_name, why_empty="the strategy gives no per-row gain")
    for name in used:
        values = long.filter(pl.col("name") == name)
        meta[f"{name}_distribution"] = ui.histogram({"pool": values["value"].to_numpy(), "subset": values.filter(pl.col("selected"))["value"].to_numpy()},
                                                    f"{name}: subset vs pool", name)
    return meta


def _subset_metadata(subset: pl.DataFrame, reasons: pl.DataFrame, c: Candidates, cfg, strategy: Strategy, rule: str) -> dict:
    stats, picture = _coverage(reasons, c)
    sample = pl.concat([reasons.filter(pl.col("selected")).sort("rank").head(8), reasons.filter(~pl.col("selected")).head(7)])
    meta = {
        "dagster/row_count": subset.height,
        "candidates": c.n,
        "budget": rule,
        "strategy": strategy.name,
        # The chosen strategy and its own settings only, not every strategy's fields.
        "config": dg.MetadataValue.json({**cfg.model_dump(mode="json", exclude={"strategy"}), "strategy": strategy.name,
                                         "settings": cfg.strategy.model_dump(mode="json", exclude={"strategy"})}),
        "reasons_sample": ui.table(sample.select("row_id", "selected", "rank", "gain", "reason", "tree_path", "nearest_similarity")),
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
        "not_selected_by_reason": ui.table(not_selected.group_by("why").len().sort("len", descending=True).head(10)),
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


@dg.asset(
    group_name="selection",
    kinds={"html"},
    deps=["selected_subset", "selection_reasons"],
    automation_condition=global_refresh(),
    description="One self-contained HTML page to share: the settings, pool and subset summaries, the pictures and a sample of reasons.",
)
def selection_report(context: dg.AssetExecutionContext, storage: CurationStorage) -> dg.MaterializeResult:
    from curation_assets.report import build_report

    event = context.instance.get_latest_materialization_event(dg.AssetKey("selected_subset"))
    config = event.asset_materialization.metadata.get("config") if event and event.asset_materialization else None
    page = build_report(storage, context.instance, {"selected_subset": config.value} if config is not None else None)
    path = storage.exports / "selection_report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(str(path)), "bytes": len(page.encode())})
