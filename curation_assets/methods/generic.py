"""Generic strategies: `top_k` by any score column and `random` (baselines of the same budget)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from curation_assets.methods import selection as rules
from curation_assets.methods.plugin import Budget, Candidates, Picked, Settings, Strategy, empty_gain, unpicked

VERSION = "1"


class TopKSettings(Settings):
    score: str = Field("ifd_ppl", description="The score to rank by.")
    descending: bool = Field(True, description="Higher is better.")
    score_below: float | None = Field(None, description="Keep only scores below this.")


def pick_top_k(c: Candidates, budget: Budget, s: TopKSettings) -> Picked:
    values = c.column(s.score)
    valid = np.ones(c.n, dtype=bool)
    if s.score_below is not None:
        valid &= values < s.score_below
    picked = rules.top_k(values, budget.rows, descending=s.descending, valid=valid)
    gain = empty_gain(c.n)
    gain[picked] = values[picked]
    reason = {i: ("no score" if np.isnan(values[i]) else f"{s.score} {values[i]:.4g} not below {s.score_below}" if not valid[i] else f"{s.score} below the budget") for i in unpicked(c.n, picked)}
    return Picked(picked, gain, s.score, reason, {i for i in range(c.n) if np.isnan(values[i]) or not valid[i]})


TOP_K = Strategy(name="top_k", description="The best rows by one score column.", settings=TopKSettings, version=VERSION, pick=pick_top_k)


class RandomSettings(Settings):
    seed: int = Field(0, description="Seed of the draw.")


def pick_random(c: Candidates, budget: Budget, s: RandomSettings) -> Picked:
    picked = rules.random_subset(c.n, budget.rows, s.seed)
    return Picked(picked, empty_gain(c.n), "random draw", {i: f"not drawn (seed {s.seed})" for i in unpicked(c.n, picked)})


RANDOM = Strategy(name="random", description="A uniform random draw.", settings=RandomSettings, version=VERSION, pick=pick_random, fills=frozenset({"eligible"}))
