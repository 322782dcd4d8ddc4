"""TACOS (research/tags-tacos.md §1.5): the `tacos` strategy: per-cluster quotas over the judge's
comparative scores (selection.tacos_select, sorted_1000.py), or Bradley-Terry strengths fitted on
the wins the judgements imply. The judge's prompt, parser and pairing plan are in comparative.py;
the judging itself is the comparative_scores asset."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.methods import selection as rules
from curation_assets.methods.comparative import bradley_terry
from curation_assets.methods.plugin import Budget, Candidates, Picked, Settings, Strategy, empty_gain

VERSION = "1"


class TacosSettings(Settings):
    quota_mode: Literal["equal", "proportional", "sqrt", "global"] = Field("equal", description="equal (TACOS), proportional, sqrt or global.")
    per_cluster: int | None = Field(None, description="Rows per cluster (TACOS: 20); null = budget / clusters.")
    fill_quota: bool = Field(True, description="Give quota small clusters leave unused to the best other rows.")
    tacos_aggregation: Literal["raw", "bradley_terry"] = Field("raw", description="raw (TACOS: each item's score beside its partner) or bradley_terry (strengths fitted on the implied wins).")


def pick(c: Candidates, budget: Budget, s: TacosSettings) -> Picked:
    if c.comparisons is None or c.comparisons.is_empty():
        raise ValueError("the tacos strategy needs comparative_scores: enable the judge (resources.judge.enabled)")
    position = {r: i for i, r in enumerate(c.rows["row_id"].to_list())}
    judged = c.comparisons.drop_nulls("score")
    if s.tacos_aggregation == "bradley_terry":
        judged = judged.with_columns(pl.col("row_id").replace_strict(bradley_terry_strengths(judged), default=None).alias("score"))
    scores = [(position[r], int(k), v) for r, k, v in judged.select("row_id", "cluster", "score").iter_rows() if r in position]
    result = rules.tacos_select(scores, budget.rows, mode=s.quota_mode, per_cluster=s.per_cluster, fill=s.fill_quota)
    # The value shown for a row: its mean over the scores the budget could use (none above 100).
    usable = judged if s.tacos_aggregation == "bradley_terry" else judged.filter(pl.col("score") <= 100)
    mean = usable.group_by("row_id").agg(pl.col("score").mean())
    mean_score = c.rows.select("row_id").join(mean, on="row_id", how="left")["score"].fill_null(float("nan")).to_numpy()
    gain = empty_gain(c.n)
    for i in result.selected:
        gain[i] = mean_score[i]
    reason = dict(result.reason)
    unscored = {i for i in range(c.n) if np.isnan(mean_score[i])}
    for i in unscored:
        reason.setdefault(i, "no comparative score (not a label-set representative, or no partner in its cluster)")
    cluster = np.array([result.picked_in.get(i, -2) for i in range(c.n)], dtype=float)
    return Picked(result.selected, gain, "comparative score", reason, unscored, extra={"picked_for_cluster": np.where(cluster == -2, np.nan, cluster)})


def bradley_terry_strengths(judged: pl.DataFrame) -> dict[str, float]:
    """Log-strengths from the win or tie each judge call implies (score beside partner_score),
    each call counted once, odd leftovers' calls included."""
    first = pl.col("position") == 1
    calls = judged.drop_nulls(["score", "partner_score"]).select(
        "cluster", "round",
        pl.when(first).then("row_id").otherwise("partner").alias("a"),
        pl.when(first).then("partner").otherwise("row_id").alias("b"),
        pl.when(first).then("score").otherwise("partner_score").alias("sa"),
        pl.when(first).then("partner_score").otherwise("score").alias("sb"),
    ).unique(["cluster", "round", "a", "b"], maintain_order=True)
    result = pl.when(pl.col("sa") > pl.col("sb")).then(1.0).when(pl.col("sa") == pl.col("sb")).then(0.5).otherwise(0.0)
    calls = calls.with_columns(result.alias("result"))
    return bradley_terry(calls["a"].to_numpy(), calls["b"].to_numpy(), calls["result"].to_numpy())


TACOS = Strategy(
    name="tacos",
    description="TACOS: per-cluster quotas of the best judged rows, smallest cluster first.",
    settings=TacosSettings,
    version=VERSION,
    pick=pick,
)
