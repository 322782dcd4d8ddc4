"""instance_scores: the registered score methods (methods/registry.py) per canonical row of a shard;
comparative_scores: TACOS judge scores within tag clusters for the whole pool."""

from enum import Enum
from typing import Literal

import dagster as dg
import polars as pl
from pydantic import Field, create_model

from curation_assets import ui
from curation_assets.automation import global_refresh, shard_refresh
from curation_assets.method_config import merged_fields
from curation_assets.methods import comparative
from curation_assets.methods.plugin import ScoreMethod, version_hash
from curation_assets.methods.registry import SCORE_METHODS
from curation_assets.partitions import pool_shards
from curation_assets.rowwise import compute_missing
from curation_assets.shards import all_shards, pool_rows, shard_frames
from resources.llm import ENDPOINT_RETRY_POLICY, ChatModelResource, Completion
from resources.scorer import CausalLMScorerResource, DeitaScorersResource
from resources.storage import CurationStorage

DEFAULT_METHODS = ["ifd", "tshirt"]
ROW_COLUMNS = ("row_id", "instruction", "input", "response", "messages")


def config_class(methods: dict[str, ScoreMethod] | None = None) -> type[dg.Config]:
    """instance_scores' run config: `methods` (which to compute), `chunk_rows`, and every
    registered method's settings as flat keys (research/tshirt-iterit.md for the defaults)."""
    methods = SCORE_METHODS if methods is None else methods
    names = tuple(methods)
    method_name = Enum("ScoreMethodName", {n: n for n in names}, type=str)  # an enum: Dagster checks the names
    return create_model(
        "InstanceScoresConfig",
        __base__=dg.Config,
        __doc__="Which scores to compute and their settings: " + "; ".join(f"{m.name}: {m.description}" for m in methods.values()) + ".",
        methods=(list[method_name], Field([m for m in DEFAULT_METHODS if m in methods], description="Score methods to compute: " + ", ".join(names) + ".")),
        chunk_rows=(int, Field(4096, description="Rows scored and cached per chunk.")),
        **merged_fields({m.name: m.settings for m in methods.values()}),
    )


InstanceScoresConfig = config_class()


def chosen_methods(config) -> list[str]:
    """The configured method names (Dagster hands over enum members, defaults stay strings)."""
    return [m.value if isinstance(m, Enum) else m for m in config.methods]


def method_settings(method: ScoreMethod, config) -> object:
    """The method's own settings model out of the flat config (validated again: pure code gets its type)."""
    values = config.model_dump(exclude={"methods"})
    return method.settings.model_validate({k: v for k, v in values.items() if k in method.settings.model_fields})


def code_version(config: dict | None = None, resources: dict | None = None, methods: dict[str, ScoreMethod] | None = None) -> str:
    """Dagster's code version of instance_scores for this run config (and resource config): the
    chosen methods' VERSIONs and settings, and the scorers' model settings. A fix in a method's
    math (a VERSION bump) or a changed setting changes it, so the UI shows every shard stale and
    the automation refreshes them; the row caches then recompute exactly the affected method."""
    methods = SCORE_METHODS if methods is None else methods
    cfg = config_class(methods).model_validate(config or {})
    models = {key: dict((resources or {}).get(key) or {}) for key in {m.model for m in methods.values() if m.model}}
    parts = [(name, methods[name].settings_key(method_settings(methods[name], cfg)), models.get(methods[name].model)) for name in chosen_methods(cfg)]
    return version_hash(parts)


def _metadata(scores: pl.DataFrame, rows: pl.DataFrame, stats: dict, versions: dict, models: dict, chosen: list[ScoreMethod], config) -> dict:
    meta = {
        "dagster/row_count": scores.height,
        "config": dg.MetadataValue.json({**config.model_dump(mode="json", exclude={"methods"}), "methods": chosen_methods(config)}),
        "cache": ui.table(pl.DataFrame([{"method": m, **s, "version": versions[m]} for m, s in stats.items()])),
    }
    for key, identity in models.items():
        meta[key] = dg.MetadataValue.json(identity)
    for m in chosen:
        for column, title in m.histograms.items():
            if column in scores.columns:
                values = scores[column].drop_nans().drop_nulls()
                meta[f"{column}_histogram"] = ui.histogram({column: values.to_numpy()}, title, column)
                meta[f"{column}_nan_rows"] = scores.height - values.len()
    if "ifd_ppl" in scores.columns:
        view = scores.select("row_id", "ifd_ppl").join(rows.select("row_id", "instruction", "response"), on="row_id").filter(pl.col("ifd_ppl").is_not_nan())
        valid = view.filter(pl.col("ifd_ppl") < 1)
        meta["highest_ifd_below_1"] = ui.table(valid.sort("ifd_ppl", descending=True).head(5), 160)
        meta["lowest_ifd"] = ui.table(view.sort("ifd_ppl").head(5), 160)
    notes = [c for m in chosen for c in m.notes if c in scores.columns]
    if notes:
        reasons = pl.concat([scores.select(pl.lit(c).alias("column"), pl.col(c).alias("reason")).drop_nulls("reason") for c in notes])
        meta["notes"] = ui.table(reasons.group_by("column", "reason").len().sort("len", descending=True))
    return meta


def build_asset(config: dict | None = None, resources: dict | None = None, methods: dict[str, ScoreMethod] | None = None) -> dg.AssetsDefinition:
    """The instance_scores asset over `methods` (default: the registry as it is now), its code
    version computed from `config` and `resources` (the project's run and resource config)."""
    methods = dict(SCORE_METHODS if methods is None else methods)
    Config = config_class(methods)

    @dg.asset(
        name="instance_scores",
        partitions_def=pool_shards,
        group_name="scores",
        kinds={"parquet", "polars", "pytorch"},
        pool="gpu",
        code_version=code_version(config, resources, methods),
        automation_condition=shard_refresh(),
        # A step process lost mid-run (killed, out of memory) is retried once; the rows it had scored
        # are in the row cache, so the retry scores only the rest.
        retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
        # The IO manager writes the column schema; a column's description names its method.
        metadata={"descriptions": {"row_id": "Canonical pool row.", **{name: f"{m.name}: {c.description}" for m in methods.values() for name, c in m.columns.items()}}},
        description="Per canonical row, the registered score methods: " + "; ".join(f"{m.name} ({m.description})" for m in methods.values())
        + ". Cached per row under each method's VERSION, settings and model.",
    )
    def instance_scores(
        context: dg.AssetExecutionContext,
        config: Config,
        raw_pool: pl.LazyFrame,
        scorer: CausalLMScorerResource,
        deita_scorers: DeitaScorersResource,
        storage: CurationStorage,
    ) -> dg.MaterializeResult:
        models = {"scorer": scorer, "deita_scorers": deita_scorers}
        rows = raw_pool.filter(pl.col("duplicate_of").is_null()).select(*ROW_COLUMNS).collect()
        scores = rows.select("row_id")
        stats, versions, identities = {}, {}, {}
        for name in chosen_methods(config):
            method = methods[name]
            model = models[method.model] if method.model else None
            try:
                settings = method_settings(method, config)
                identity = model.identity() if model is not None else None
                versions[name] = method.cache_version(settings, identity)
            except ValueError as exc:
                raise dg.Failure(f"score method {name}: {exc}") from exc
            if method.model:
                identities[method.model] = identity

            def compute(chunk: pl.DataFrame, method=method, settings=settings, model=model) -> pl.DataFrame:
                if chunk.is_empty():  # no model call: the method's columns only
                    return method.empty()
                try:
                    out = method.compute(chunk, settings, model)
                except ValueError as exc:
                    raise dg.Failure(f"score method {method.name}: {exc}") from exc
                if out.height != chunk.height or out.columns != list(method.schema()):
                    raise dg.Failure(f"score method {method.name} returned {out.height} rows with columns {out.columns}; expected {chunk.height} rows with {list(method.schema())}")
                return out

            result, s = compute_missing(
                rows, storage.row_cache(f"instance_scores/{name}", versions[name], context.log.warning), compute,
                chunk_rows=config.chunk_rows, log=lambda m, name=name: context.log.info(f"{name}: {m}"),
            )
            stats[name] = {"reused": s.reused, "computed": s.computed}
            scores = scores.join(result, on="row_id", how="left", maintain_order="left")
        return dg.MaterializeResult(value=scores, metadata=_metadata(scores, rows, stats, versions, identities, [methods[m] for m in chosen_methods(config)], config))

    return instance_scores


instance_scores = build_asset()


# --------------------------------------------------------------------------- TACOS comparative scores


# One row per kept judgement; partner_score is the partner's score in the same call, kept for
# Bradley-Terry even where the partner's own row is not (an odd cluster's leftover).
COMPARISON_SCHEMA = {
    "row_id": pl.String, "cluster": pl.Int32, "round": pl.Int32, "position": pl.Int8, "partner": pl.String,
    "score": pl.Float64, "partner_score": pl.Float64, "error": pl.String,
}
COMPARISON_COLUMNS = {
    "row_id": "The judged row (a label-set representative).",
    "cluster": "The tag cluster it was compared in.",
    "round": "Pairing round (the first is TACOS's consecutive pairing; later ones re-pair at random).",
    "position": "1 or 2: the row's place in the judged pair (position bias).",
    "partner": "The other row of the pair.",
    "score": "The judge's 0-100 score of this row; null when the answer could not be parsed.",
    "partner_score": "The partner's score in the same call.",
    "error": "Why no score was kept; null when scored.",
}


class JudgeResource(ChatModelResource):
    """The pairwise judge (TACOS: gpt-4o at temperature 0). Off until enabled: it needs an LLM."""

    enabled: bool = Field(False, description="Score pairs; needs a reachable endpoint or a capable local model.")
    model: str = "gpt-4o"
    temperature: float = 0.0
    max_tokens: int = 2048
    score_prefill: bool = Field(
        False,
        description="Robust parser: when an answer lacks the score lines, have the model continue it from '[Response 1]:', "
        "then '[Response 2]:', and read the numbers written there (small local judges; not TACOS's). Needs a model that "
        "continues a final assistant turn: the transformers backend, or a server that does (vLLM, SGLang, llama.cpp).",
    )

    def generation_key(self) -> dict:
        key = super().generation_key()
        return {**key, "score_prefill": True} if self.score_prefill else key


class ComparativeScoresConfig(dg.Config):
    rounds: int = Field(1, description="Pairings per cluster; 1 = TACOS's single consecutive pairing.")
    both_orders: bool = Field(False, description="Also score every pair in swapped order (position-bias averaging).")
    seed: int = Field(0, description="Seed of the re-pairings and of the odd leftover's partner.")
    chunk_pairs: int = Field(256, description="Judge calls per cached chunk.")
    parser: Literal["robust", "reference"] = Field(
        "robust",
        description="robust: the prompt filled once, odd leftovers paired, unparseable answers re-asked (never 0); "
        "reference: TACOS exactly (chained replacement, odd last item dropped, regex '[Response k] Score: n', missing = 0).",
    )


def _judge(pairs: pl.DataFrame, texts: dict[str, tuple[str, str]], judge: JudgeResource, reference: bool = False) -> pl.DataFrame:
    parse = comparative.parse_pair_scores_reference if reference else comparative.parse_pair_scores
    conversations = [comparative.pair_messages(texts[a], texts[b], chained=reference) for a, b in zip(pairs["first"], pairs["second"])]
    results = judge.generate(conversations, parse)
    if judge.score_prefill and not reference:
        results = _prefilled_scores(judge, conversations, results)
    return pairs.select("row_id").with_columns(
        pl.Series("score_first", [r.value[0] if r.ok else None for r in results], dtype=pl.Float64),
        pl.Series("score_second", [r.value[1] if r.ok else None for r in results], dtype=pl.Float64),
        pl.Series("error", [r.error for r in results], dtype=pl.String),
    )


def _prefilled_scores(judge: JudgeResource, conversations: list, results: list) -> list:
    """Each unparsed answer continued from "[Response 1]:", then "[Response 2]:"; a judgement
    counts when both numbers come, else the row keeps its first error and the prefill's."""
    failed = [i for i, r in enumerate(results) if not r.ok and r.text]
    known: dict[int, tuple[float, ...]] = {i: () for i in failed}
    errors: dict[int, str] = {}
    for _ in range(2):
        asking = [i for i in failed if i not in errors]
        answers = judge.generate([comparative.score_prefill(conversations[i], results[i].text, known[i]) for i in asking],
                                 comparative.parse_prefilled_score, max_tokens=comparative.PREFILL_TOKENS)
        for i, answer in zip(asking, answers):
            if answer.ok:
                known[i] += (answer.value,)
            else:
                errors[i] = f"{results[i].error}; prefill: {answer.error}"
    out = list(results)
    for i in failed:
        out[i] = Completion(True, value=known[i], text=results[i].text, attempts=results[i].attempts) if i not in errors else Completion(False, text=results[i].text, error=errors[i], attempts=results[i].attempts)
    return out


@dg.asset(
    deps=all_shards("raw_pool"),
    group_name="scores",
    kinds={"parquet", "polars"},
    automation_condition=global_refresh(),
    retry_policy=ENDPOINT_RETRY_POLICY,
    description="TACOS comparative scores: one row per (row, cluster, round) judgement, 0-100, with its partner.",
    metadata={"descriptions": COMPARISON_COLUMNS},
)
def comparative_scores(
    context: dg.AssetExecutionContext,
    config: ComparativeScoresConfig,
    normalized_tags: pl.DataFrame,
    judge: JudgeResource,
    storage: CurationStorage,
) -> dg.MaterializeResult:
    if not judge.enabled:
        context.log.warning("the judge is disabled (resources.judge.enabled): no comparative scores")
        empty = pl.DataFrame(schema=COMPARISON_SCHEMA)
        return dg.MaterializeResult(value=empty, metadata={"dagster/row_count": 0, "judge": "disabled"})
    # TACOS lists each cluster's members, and the clusters, in the order label sets first appear.
    reps = normalized_tags.filter(pl.col("labelset_representative")).sort("labelset_first_seen", maintain_order=True).select("row_id", "clusters_in_tag_order")
    members = comparative.cluster_members(reps.iter_rows())
    reference = config.parser == "reference"
    plan = comparative.plan_comparisons(members, rounds=config.rounds, both_orders=config.both_orders, seed=config.seed, drop_odd=reference)
    # The judge sees instruction + input, concatenated as api_score_pairs.py does.
    judged_text = pl.concat_str(pl.col("instruction"), pl.col("input").fill_null(""))
    judged_rows = pool_rows(shard_frames(context, storage, "raw_pool")).filter(pl.col("row_id").is_in(reps["row_id"].implode()))
    texts = {r: (i, o) for r, i, o in judged_rows.select("row_id", judged_text, "response").collect().iter_rows()}
    version = version_hash("tacos-pair" + ("-reference" if reference else ""), judge.generation_key(), comparative.JUDGE_SYSTEM, comparative.PAIR_PROMPT)
    pairs = pl.DataFrame(
        {"first": [p.first for p in plan], "second": [p.second for p in plan]}, schema={"first": pl.String, "second": pl.String}
    ).unique(maintain_order=True).with_columns((pl.col("first") + "|" + pl.col("second")).alias("row_id"))
    judged, stats = compute_missing(
        pairs, storage.row_cache("comparative_scores", version, context.log.warning), lambda chunk: _judge(chunk, texts, judge, reference),
        chunk_rows=config.chunk_pairs, keep=lambda r: r["error"].is_null(), log=context.log.info,
    )
    by_pair = {k: v for k, *v in judged.iter_rows()}
    out = []
    for p in plan:
        s1, s2, error = by_pair[f"{p.first}|{p.second}"]
        if p.keep[0]:
            out.append((p.first, p.cluster, p.round, 1, p.second, s1, s2, error))
        if p.keep[1]:
            out.append((p.second, p.cluster, p.round, 2, p.first, s2, s1, error))
    table = pl.DataFrame(out, schema=COMPARISON_SCHEMA, orient="row")
    unpaired = sum(len(m) == 1 for m in members.values())
    scored = table.drop_nulls("score")
    return dg.MaterializeResult(
        value=table,
        metadata={
            "dagster/row_count": table.height,
            "judge_calls_now": stats.computed,
            "judge_calls_reused": stats.reused,
            "failed_judgements": table.height - scored.height,
            "failures_by_reason": ui.table(table.drop_nulls("error").group_by("error").len()),
            "clusters_without_partner": unpaired,
            "score_histogram": ui.histogram({"score": scored["score"].to_numpy()}, "Comparative scores (0-100)", "score", bins=20) if scored.height else dg.MetadataValue.text("no scores"),
            "judge": dg.MetadataValue.json(judge.generation_key()),
        },
    )
