"""Cherry LLM (research/tshirt-iterit.md §3.1, reference-quirks.md §3): the `cherry` score
(loss-ratio IFD under the Alpaca, WizardLM or Vicuna prompt, with the reference's skip rules; the
computation is ifd.cherry_ifd) and the `cherry` strategy (data_by_IFD.py: among the rows its rules
keep, the highest IFDs; a fractional budget is a share of the kept rows, not of the pool)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.methods import selection as rules
from curation_assets.methods.ifd import cherry_ifd, samples_of
from curation_assets.methods.plugin import Budget, Candidates, Column, Picked, ScoreMethod, Settings, Strategy, empty_gain, unpicked

VERSION = "1"


class CherrySettings(Settings):
    cherry_max_length: int = Field(512, description="Cherry LLM truncation length (its scripts: 512).")
    cherry_prompt: Literal["alpaca", "wiz", "vicuna"] = Field("alpaca", description="Cherry LLM prompt: alpaca, wiz (WizardLM) or vicuna (its V2 scripts).")


def compute(rows: pl.DataFrame, settings: CherrySettings, scorer) -> pl.DataFrame:
    tokenizer, model = scorer.load()
    r = cherry_ifd(model, tokenizer, samples_of(rows), max_length=settings.cherry_max_length, token_budget=scorer.token_budget, prompt=settings.cherry_prompt)
    return pl.DataFrame({
        "row_id": rows["row_id"],
        "cherry_loss_cond": [x.loss_cond for x in r],
        "cherry_loss_direct": [x.loss_direct for x in r],
        "ifd_loss": [x.ifd_loss for x in r],
        "cherry_skip": [x.skip for x in r],
    }, schema=CHERRY_SCORE.schema())


CHERRY_SCORE = ScoreMethod(
    name="cherry",
    description="Cherry LLM IFD (loss ratio)",
    settings=CherrySettings,
    version=VERSION,
    columns={
        "cherry_loss_cond": Column(pl.Float64, "Mean response loss given the Cherry prompt."),
        "cherry_loss_direct": Column(pl.Float64, "Mean loss of '### Response:' + response alone."),
        "ifd_loss": Column(pl.Float64, "Cherry IFD = loss ratio."),
        "cherry_skip": Column(pl.String, "Cherry's skip rule that drops the row from its selection, if any."),
    },
    compute=compute,
    offers=("ifd_loss",),
    histograms={"ifd_loss": "Cherry IFD (loss ratio)"},
    notes=("cherry_skip",),
)


class CherryStrategySettings(Settings):
    pass


def pick(c: Candidates, budget: Budget, s: CherryStrategySettings) -> Picked:
    rate = c.column("ifd_loss")
    skip = c.rows["cherry_skip"].to_list() if "cherry_skip" in c.rows.columns else [None] * c.n
    kept = np.array([x is None for x in skip])
    # data_by_IFD.py: a fractional budget is a share of the rows its skip rules keep, not of the pool.
    fraction = budget.fraction
    picked, n = rules.cherry(rate, kept, budget_rate=fraction, count=None if fraction else budget.rows)
    picked = sorted(picked, key=lambda i: -rate[i])
    gain = empty_gain(c.n)
    gain[picked] = rate[picked]
    below = f"IFD below the budget ({n:,} of {int(kept.sum()):,} rows kept by Cherry's rules)"
    reason = {i: (f"skipped by Cherry's rule: {skip[i]}" if skip[i] else "no IFD" if np.isnan(rate[i]) else below) for i in unpicked(c.n, picked)}
    rule = f"{fraction:.4g} of {int(kept.sum()):,} rows kept by Cherry's rules = {n:,} rows" if fraction else None
    return Picked(picked, gain, "IFD (loss ratio)", reason, {i for i in range(c.n) if not kept[i] or np.isnan(rate[i])}, budget=n if fraction else None, budget_rule=rule)


CHERRY = Strategy(
    name="cherry",
    description="Cherry LLM: the highest loss-ratio IFDs among the rows its rules keep (data_by_IFD.py).",
    settings=CherryStrategySettings,
    version=VERSION,
    pick=pick,
)
