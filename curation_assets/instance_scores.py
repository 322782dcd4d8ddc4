"""instance_scores: IFD-family scores per canonical row of a shard; comparative_scores: TACOS judge
scores within tag clusters for the whole pool."""

from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.automation import global_refresh, shard_refresh
from curation_assets.methods import comparative, deita
from curation_assets.methods.ifd import ITERIT_TEMPLATES, cherry_ifd, iterit_ifd, plain_ifd, samples_from_rows
from curation_assets.methods.selection import deita_score
from curation_assets.methods.tshirt import noisy_scores
from curation_assets.normalized_tags import all_shards, pool_rows, shard_frames
from curation_assets.partitions import pool_shards
from curation_assets.rowwise import compute_missing
from resources.llm import ENDPOINT_RETRY_POLICY, ChatModelResource, version_hash
from resources.scorer import CausalLMScorerResource, DeitaScorersResource
from resources.storage import CurationStorage

METHOD_NAMES = ("ifd", "tshirt", "cherry", "iterit", "deita")


class InstanceScoresConfig(dg.Config):
    """Which scores to compute and their reference settings (research/tshirt-iterit.md)."""

    methods: list[str] = Field(["ifd", "tshirt"], description="ifd (Superfiltering + T-SHIRT clean), tshirt (noisy neighbours), cherry, iterit, deita (DEITA's scorers).")
    max_length: int = Field(1024, description="ifd and tshirt truncation length (Superfiltering, T-SHIRT: 1024).")
    cherry_max_length: int = Field(512, description="Cherry LLM truncation length (its scripts: 512).")
    cherry_prompt: str = Field("alpaca", description="Cherry LLM prompt: alpaca, wiz (WizardLM) or vicuna (its V2 scripts).")
    iterit_max_length: int | None = Field(None, description="IterIT truncation; null = the model's max positions.")
    iterit_chat_template: str = Field("model", description="IterIT chat template: model (the scorer's own), llama-3.1 (IterIT's train.py), or a Jinja file.")
    iterit_strip_output: bool = Field(True, description="Strip responses before the chat template (fixes the reference's |trim pitfall).")
    iterit_add_pad: bool = Field(False, description="Score as after IterIT's train.py adds a mean-initialised [PAD] token to a tokenizer without one (shifts losses by about 1e-5 relative).")
    tshirt_copies: int = Field(30, description="Noisy neighbours per row (T-SHIRT uses 30).")
    tshirt_alpha: float = Field(5.0, description="Noise scale alpha (T-SHIRT: 5).")
    seed: int = Field(42, description="Seed of the T-SHIRT noise (combined with each row_id).")
    chunk_rows: int = Field(4096, description="Rows scored and cached per chunk.")


def _columns(method: str, rows: pl.DataFrame, model, tokenizer, cfg: InstanceScoresConfig, budget: int) -> pl.DataFrame:
    samples = samples_from_rows(rows["instruction"], rows["input"], rows["response"], rows["messages"].to_list())
    ids = rows["row_id"]
    empty = rows.is_empty()  # no model call: an empty frame with the method's columns
    if method == "ifd":
        r = [] if empty else plain_ifd(model, tokenizer, samples, max_length=cfg.max_length, token_budget=budget)
        return pl.DataFrame({
            "row_id": ids,
            "prompt_tokens": [x.prompt_tokens for x in r],
            "response_tokens": [x.response_tokens for x in r],
            "sf_loss_cond": [x.sf_loss_cond for x in r],
            "sf_loss_direct": [x.sf_loss_direct for x in r],
            "ifd_ppl": [x.ifd_ppl for x in r],
            "tshirt_ifd": [x.tshirt_ifd for x in r],
            "tshirt_d": [x.tshirt_d.tolist() for x in r],
            "ifd_note": [x.error for x in r],
        }, schema_overrides={"prompt_tokens": pl.Int32, "response_tokens": pl.Int32, "tshirt_d": pl.List(pl.Float32), "ifd_note": pl.String})
    if method == "tshirt":
        r = [] if empty else noisy_scores(model, tokenizer, samples, ids.to_list(), copies=cfg.tshirt_copies, alpha=cfg.tshirt_alpha, seed=cfg.seed, max_length=cfg.max_length, token_budget=budget)
        return pl.DataFrame({
            "row_id": ids,
            "noisy_ifd": [x.noisy_ifd.tolist() for x in r],
            "noisy_d": [[d.tolist() for d in x.noisy_d] for x in r],
            "avg_noisy_ifd": [float(np.mean(x.noisy_ifd)) for x in r],
            "std_noisy_ifd": [float(np.std(x.noisy_ifd)) for x in r],
            "tshirt_note": [x.error for x in r],
        }, schema_overrides={"noisy_ifd": pl.List(pl.Float64), "noisy_d": pl.List(pl.List(pl.Float32)), "tshirt_note": pl.String})
    if method == "cherry":
        r = [] if empty else cherry_ifd(model, tokenizer, samples, max_length=cfg.cherry_max_length, token_budget=budget, prompt=cfg.cherry_prompt)
        return pl.DataFrame({
            "row_id": ids,
            "cherry_loss_cond": [x.loss_cond for x in r],
            "cherry_loss_direct": [x.loss_direct for x in r],
            "ifd_loss": [x.ifd_loss for x in r],
            "cherry_skip": [x.skip for x in r],
        }, schema_overrides={"cherry_skip": pl.String})
    if method == "iterit":
        max_len = cfg.iterit_max_length or (0 if empty else int(getattr(model.config, "max_position_embeddings", 8192)))
        r = [] if empty else iterit_ifd(model, tokenizer, samples, max_length=max_len, token_budget=budget, strip_output=cfg.iterit_strip_output, chat_template=iterit_template(cfg), add_pad=cfg.iterit_add_pad)
        return pl.DataFrame({
            "row_id": ids,
            "iterit_cl": [x.cl for x in r],
            "iterit_pl": [x.pl for x in r],
            "iterit_ifd": [x.ifd_bf16 for x in r],
            "iterit_ifd_fp32": [x.ifd for x in r],
            "iterit_answer_tokens": [x.answer_tokens for x in r],
        }, schema_overrides={"iterit_answer_tokens": pl.Int32})
    raise ValueError(f"unknown score method {method!r}; known: {METHOD_NAMES}")


def _deita_columns(rows: pl.DataFrame, scorers: DeitaScorersResource) -> pl.DataFrame:
    """Per row: DEITA complexity and quality of each user turn, and the sum of their products."""
    pairs = [deita.turn_pairs(m) for m in rows["messages"].to_list()]
    flat = [p for row in pairs for p in row]
    prompts = {
        "complexity": [deita.COMPLEXITY_TEMPLATE.format(instruction=i) for i, _ in flat],
        "quality": [deita.QUALITY_TEMPLATE.format(instruction=i, output=o) for i, o in flat],
    }
    scored = {kind: np.zeros(0) for kind in prompts}
    for kind, texts in prompts.items():
        if texts:  # an empty chunk only gives the columns: no model is loaded
            resource = scorers.scorer(kind)
            tokenizer, model = resource.load()
            window = int(getattr(model.config, "max_position_embeddings", 1 << 30))
            scored[kind] = deita.expected_scores(model, tokenizer, texts, max_length=window, token_budget=resource.token_budget)
    bounds = np.cumsum([0] + [len(p) for p in pairs])
    complexity = [scored["complexity"][a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    quality = [scored["quality"][a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    return pl.DataFrame({
        "row_id": rows["row_id"],
        "deita_complexity": complexity,
        "deita_quality": quality,
        "deita_score": deita_score([complexity, quality]),
    }, schema_overrides={"deita_complexity": pl.List(pl.Float64), "deita_quality": pl.List(pl.Float64), "deita_score": pl.Float64})


def iterit_template(cfg: InstanceScoresConfig) -> str | None:
    """The Jinja text of the IterIT template setting (None: the scorer's own)."""
    if cfg.iterit_chat_template == "model":
        return None
    if cfg.iterit_chat_template in ITERIT_TEMPLATES:
        return ITERIT_TEMPLATES[cfg.iterit_chat_template]
    path = Path(cfg.iterit_chat_template)
    if not path.is_file():
        raise dg.Failure(f"iterit_chat_template {cfg.iterit_chat_template!r} is neither model, one of {sorted(ITERIT_TEMPLATES)}, nor a file")
    return path.read_text()


def method_version(method: str, scorer: CausalLMScorerResource, cfg: InstanceScoresConfig, deita_scorers: DeitaScorersResource | None = None) -> str:
    if method == "deita":
        return version_hash(method, deita_scorers.identity(), deita.COMPLEXITY_TEMPLATE, deita.QUALITY_TEMPLATE)
    params = {
        "ifd": [cfg.max_length],
        "tshirt": [cfg.max_length, cfg.tshirt_copies, cfg.tshirt_alpha, cfg.seed],
        "cherry": [cfg.cherry_max_length, cfg.cherry_prompt],
        # The [PAD] option joins the key only when on, so results cached without it stay valid.
        "iterit": [cfg.iterit_max_length, cfg.iterit_strip_output, iterit_template(cfg)] + (["add_pad"] if cfg.iterit_add_pad else []),
    }[method]
    return version_hash(method, scorer.identity(), params)


HISTOGRAMS = {
    "ifd_ppl": "Superfiltering IFD (PPL ratio)", "avg_noisy_ifd": "T-SHIRT mean noisy IFD", "ifd_loss": "Cherry IFD (loss ratio)",
    "iterit_ifd": "IterIT IFD (chat template)", "deita_score": "DEITA score (sum of complexity x quality)",
}


def _metadata(scores: pl.DataFrame, rows: pl.DataFrame, stats: dict, scorer: CausalLMScorerResource, deita_scorers: DeitaScorersResource, cfg: InstanceScoresConfig) -> dict:
    meta = {
        "dagster/row_count": scores.height,
        "config": dg.MetadataValue.json(cfg.model_dump()),
        "cache": ui.md(pl.DataFrame([{"method": m, **s} for m, s in stats.items()])),
    }
    if set(cfg.methods) - {"deita"}:
        meta["scorer"] = dg.MetadataValue.json({**scorer.identity(), "device": scorer.device, "token_budget": scorer.token_budget})
    if "deita" in cfg.methods:
        meta["deita_scorers"] = dg.MetadataValue.json(deita_scorers.identity())
    for column, title in HISTOGRAMS.items():
        if column in scores.columns:
            values = scores[column].drop_nans().drop_nulls()
            meta[f"{column}_histogram"] = ui.histogram({column: values.to_numpy()}, title, column)
            meta[f"{column}_nan_rows"] = scores.height - values.len()
    if "ifd_ppl" in scores.columns:
        view = scores.select("row_id", "ifd_ppl").join(rows.select("row_id", "instruction", "response"), on="row_id").filter(pl.col("ifd_ppl").is_not_nan())
        valid = view.filter(pl.col("ifd_ppl") < 1)
        meta["highest_ifd_below_1"] = ui.md(valid.sort("ifd_ppl", descending=True).head(5), 70)
        meta["lowest_ifd"] = ui.md(view.sort("ifd_ppl").head(5), 70)
    notes = [c for c in ("ifd_note", "tshirt_note", "cherry_skip") if c in scores.columns]
    if notes:
        reasons = pl.concat([scores.select(pl.lit(c).alias("column"), pl.col(c).alias("reason")).drop_nulls("reason") for c in notes])
        meta["notes"] = ui.md(reasons.group_by("column", "reason").len().sort("len", descending=True))
    return meta


@dg.asset(
    partitions_def=pool_shards,
    group_name="scores",
    kinds={"parquet", "polars", "pytorch"},
    pool="gpu",
    automation_condition=shard_refresh(),
    description="Per canonical row: IFD-family scores (Superfiltering, T-SHIRT, Cherry, IterIT) and DEITA's complexity and quality, cached per model and method version.",
)
def instance_scores(
    context: dg.AssetExecutionContext,
    config: InstanceScoresConfig,
    raw_pool: pl.LazyFrame,
    scorer: CausalLMScorerResource,
    deita_scorers: DeitaScorersResource,
    storage: CurationStorage,
) -> dg.MaterializeResult:
    unknown = set(config.methods) - set(METHOD_NAMES)
    if unknown:
        raise dg.Failure(f"unknown score methods {sorted(unknown)}; known: {list(METHOD_NAMES)}")
    rows = raw_pool.filter(pl.col("duplicate_of").is_null()).select("row_id", "instruction", "input", "response", "messages").collect()
    scores = rows.select("row_id")
    stats = {}
    for method in config.methods:
        def compute(chunk: pl.DataFrame, method=method) -> pl.DataFrame:
            if method == "deita":
                return _deita_columns(chunk, deita_scorers)
            tokenizer, model = scorer.load() if chunk.height else (None, None)  # loaded once per process (cached)
            return _columns(method, chunk, model, tokenizer, config, scorer.token_budget)

        result, s = compute_missing(
            rows, storage.row_cache(f"instance_scores/{method}", method_version(method, scorer, config, deita_scorers)), compute,
            chunk_rows=config.chunk_rows, log=lambda m, method=method: context.log.info(f"{method}: {m}"),
        )
        stats[method] = {"reused": s.reused, "computed": s.computed}
        scores = scores.join(result, on="row_id", how="left", maintain_order="left")
    return dg.MaterializeResult(value=scores, metadata=_metadata(scores, rows, stats, scorer, deita_scorers, config))


# --------------------------------------------------------------------------- TACOS comparative scores


# One row per kept judgement; partner_score is the partner's score in the same call, kept for
# Bradley-Terry even where the partner's own row is not (an odd cluster's leftover).
COMPARISON_SCHEMA = {
    "row_id": pl.String, "cluster": pl.Int32, "round": pl.Int32, "position": pl.Int8, "partner": pl.String,
    "score": pl.Float64, "partner_score": pl.Float64, "error": pl.String,
}


class JudgeResource(ChatModelResource):
    """The pairwise judge (TACOS: gpt-4o at temperature 0). Off until enabled: it needs an LLM."""

    enabled: bool = Field(False, description="Score pairs; needs a reachable endpoint or a capable local model.")
    model: str = "gpt-4o"
    temperature: float = 0.0
    max_tokens: int = 2048


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
    results = judge.generate([comparative.pair_messages(texts[a], texts[b], chained=reference) for a, b in zip(pairs["first"], pairs["second"])], parse)
    return pairs.select("row_id").with_columns(
        pl.Series("score_first", [r.value[0] if r.ok else None for r in results], dtype=pl.Float64),
        pl.Series("score_second", [r.value[1] if r.ok else None for r in results], dtype=pl.Float64),
        pl.Series("error", [r.error for r in results], dtype=pl.String),
    )


@dg.asset(
    deps=all_shards("raw_pool"),
    group_name="scores",
    kinds={"parquet", "polars"},
    automation_condition=global_refresh(),
    retry_policy=ENDPOINT_RETRY_POLICY,
    description="TACOS comparative scores: one row per (row, cluster, round) judgement, 0-100, with its partner.",
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
        pairs, storage.row_cache("comparative_scores", version), lambda chunk: _judge(chunk, texts, judge, reference),
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
            "failures_by_reason": ui.md(table.drop_nulls("error").group_by("error").len()),
            "clusters_without_partner": unpaired,
            "score_histogram": ui.histogram({"score": scored["score"].to_numpy()}, "Comparative scores (0-100)", "score", bins=20) if scored.height else dg.MetadataValue.text("no scores"),
            "judge": dg.MetadataValue.json(judge.generation_key()),
        },
    )
