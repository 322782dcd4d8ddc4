"""Superfiltering (research/tshirt-iterit.md §1): the `ifd` score (IFD = PPL(y|x) / PPL(y) under a
small scorer, plus T-SHIRT's clean row from the same passes) and the `superfiltering` strategy
(keep IFD < threshold, highest first). The IFD computation itself is in ifd.plain_ifd."""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.methods import selection as rules
from curation_assets.methods.ifd import plain_ifd, samples_of
from curation_assets.methods.plugin import Budget, Candidates, Column, Picked, ScoreMethod, Settings, Strategy, empty_gain, unpicked

VERSION = "1"


class IFDSettings(Settings):
    max_length: int = Field(1024, description="ifd and tshirt truncation length (Superfiltering, T-SHIRT: 1024).")


def compute(rows: pl.DataFrame, settings: IFDSettings, scorer) -> pl.DataFrame:
    tokenizer, model = scorer.load()
    r = plain_ifd(model, tokenizer, samples_of(rows), max_length=settings.max_length, token_budget=scorer.token_budget)
    return pl.DataFrame({
        "row_id": rows["row_id"],
        "prompt_tokens": [x.prompt_tokens for x in r],
        "response_tokens": [x.response_tokens for x in r],
        "sf_loss_cond": [x.sf_loss_cond for x in r],
        "sf_loss_direct": [x.sf_loss_direct for x in r],
        "ifd_ppl": [x.ifd_ppl for x in r],
        "tshirt_ifd": [x.tshirt_ifd for x in r],
        "tshirt_d": [x.tshirt_d.tolist() for x in r],
        "ifd_note": [x.error for x in r],
    }, schema=IFD.schema())


IFD = ScoreMethod(
    name="ifd",
    description="Superfiltering IFD (PPL ratio) and T-SHIRT's clean row",
    settings=IFDSettings,
    version=VERSION,
    columns={
        "prompt_tokens": Column(pl.Int32, "Prompt tokens (Superfiltering template)."),
        "response_tokens": Column(pl.Int32, "Response tokens scored."),
        "sf_loss_cond": Column(pl.Float64, "Mean response loss given the prompt."),
        "sf_loss_direct": Column(pl.Float64, "Mean response loss alone."),
        "ifd_ppl": Column(pl.Float64, "Superfiltering IFD = PPL(y|x) / PPL(y); NaN when not computable."),
        "tshirt_ifd": Column(pl.Float64, "T-SHIRT's clean IFD (direct budget one token smaller)."),
        "tshirt_d": Column(pl.List(pl.Float32), "T-SHIRT per-token differences l^c_t - l^u_t of the clean row."),
        "ifd_note": Column(pl.String, "Why a row has no IFD."),
    },
    compute=compute,
    offers=("ifd_ppl", "tshirt_ifd"),
    histograms={"ifd_ppl": "Superfiltering IFD (PPL ratio)"},
    notes=("ifd_note",),
    heavy=("tshirt_d",),
)


class SuperfilteringSettings(Settings):
    ifd_threshold: float = Field(1.0, description="Keep IFD below this.")
    reference_pool_size: int | None = Field(None, description="A rate budget takes int(this x rate) rows, as select_data.py's hard-coded 52002 (Alpaca); null = the rate of the candidates.")


def pick(c: Candidates, budget: Budget, s: SuperfilteringSettings) -> Picked:
    ifd = c.column("ifd_ppl")
    # select_data.py multiplies its rate by a hard-coded 52,002 (Alpaca); reference_pool_size
    # reproduces that count for a rate, where the default takes the rate of the candidates.
    reference_size = s.reference_pool_size
    own_budget = rules.superfiltering_count(budget.requested, reference_size) if reference_size and budget.fraction else None
    picked = rules.superfiltering(ifd, budget.rows if own_budget is None else own_budget, s.ifd_threshold)
    gain = empty_gain(c.n)
    gain[picked] = ifd[picked]
    reason = {i: ("no IFD" if np.isnan(ifd[i]) else f"IFD {ifd[i]:.4g} >= {s.ifd_threshold}" if ifd[i] >= s.ifd_threshold else "IFD below the budget") for i in unpicked(c.n, picked)}
    rule = f"int({reference_size:,} x {budget.requested:.4g}) = {own_budget:,} rows (reference_pool_size, as select_data.py)" if own_budget is not None else None
    return Picked(picked, gain, "IFD (PPL ratio)", reason, {i for i in range(c.n) if not ifd[i] < s.ifd_threshold}, budget=own_budget, budget_rule=rule)


SUPERFILTERING = Strategy(
    name="superfiltering",
    description="Superfiltering: IFD below the threshold, highest first (select_data.py).",
    settings=SuperfilteringSettings,
    version=VERSION,
    pick=pick,
)
