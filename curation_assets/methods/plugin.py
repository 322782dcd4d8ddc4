"""The two kinds of method plugin and what they exchange (pure: no Dagster, no resources).

A `ScoreMethod` computes per-row columns for `instance_scores`; a `Strategy` picks the subset in
`selected_subset`. Both are plain objects that a paper's module exports and `registry.py` lists;
how to add one is in that module's docstring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import polars as pl
from pydantic import BaseModel


def version_hash(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (dict keys sorted)."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)).hexdigest()[:16]


class Settings(BaseModel):
    """Base of every method's and strategy's settings: typed fields with defaults and descriptions.
    Unknown keys are errors, so a typo never passes silently."""

    model_config = {"extra": "forbid"}


class CausalLM(Protocol):
    """What a score method gets as its model (the scorer resource, or one of DEITA's scorers)."""

    token_budget: int | None

    def load(self) -> tuple[Any, Any]: ...  # (tokenizer, model), loaded once per process

    def identity(self) -> dict: ...  # what makes its results differ: model id, weights, dtype


@dataclass(frozen=True)
class Column:
    dtype: pl.DataType
    description: str


@dataclass(frozen=True)
class ScoreMethod:
    """A per-row score. `compute(rows, settings, model)` gets a non-empty frame with row_id,
    instruction, input, response and messages, and returns row_id plus `columns`, one row per
    input row in the same order. Its results are cached per row under `cache_version(...)`:
    VERSION, the settings, `extra_key(settings)` and the model's identity."""

    name: str
    description: str
    settings: type[Settings]
    version: str
    columns: dict[str, Column]
    compute: Callable[[pl.DataFrame, Any, Any], pl.DataFrame]
    offers: tuple[str, ...] = ()  # columns selection can rank by; shown with pool percentiles in the reasons
    model: str | None = "scorer"  # the resource handed to compute: "scorer", "deita_scorers", or None
    histograms: dict[str, str] = field(default_factory=dict)  # column -> plot title in the UI
    notes: tuple[str, ...] = ()  # columns holding a per-row reason when a row has no score
    heavy: tuple[str, ...] = ()  # large per-token columns, loaded for selection only by strategies that need them
    extra_key: Callable[[Any], Any] | None = None  # what decides results beyond the settings (e.g. a template file's text)

    def schema(self) -> dict[str, pl.DataType]:
        return {"row_id": pl.String, **{k: c.dtype for k, c in self.columns.items()}}

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema())

    def settings_key(self, settings: Settings) -> str:
        """VERSION and the settings (and what extra_key adds): Dagster's code version of this method."""
        extra = self.extra_key(settings) if self.extra_key else None
        return version_hash(self.name, self.version, settings.model_dump(mode="json"), extra)

    def cache_version(self, settings: Settings, model_identity: dict | None) -> str:
        """The row cache's key: settings_key plus the model's identity."""
        return f"v{self.version}-{version_hash(self.settings_key(settings), model_identity)}"


@dataclass(frozen=True)
class Budget:
    rows: int  # rows to pick (the resolved budget)
    requested: float  # as configured: a fraction (<= 1) or a count
    pool: int  # candidates

    @property
    def fraction(self) -> float | None:
        return self.requested if self.requested <= 1 else None


@dataclass
class Candidates:
    """The candidate pool in pool order. `rows` holds row_id, the texts, every score column and the
    canonical tags and clusters; the tree parts are present when the pool has a tree."""

    rows: pl.DataFrame
    memberships: pl.DataFrame | None = None  # row_id, node_id (leaf), weight
    nodes: pl.DataFrame | None = None  # node_id, parent_id, depth, is_leaf, label, member_tags
    comparisons: pl.DataFrame | None = None  # row_id, cluster, score, partner, partner_score
    vocabulary: pl.DataFrame | None = None  # tag_vocabulary
    embed: Callable[[list[str]], np.ndarray] | None = None
    tag: Callable[[list[str]], list] | None = None  # the tagger: texts -> completions with .value [{tag, ...}]
    eos_token: Callable[[], str] | None = None  # the scorer tokenizer's EOS (IterIT's documents)
    log: Callable[[str], None] = lambda _: None
    # Targeted selection: representation name -> TargetedInputs (query x candidate similarity), built
    # by the asset layer from query_set and the gradient store, RDS+, the embedder or BM25.
    targeted: Callable[[str], Any] | None = None
    _embeddings: np.ndarray | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.rows.height

    def column(self, name: str) -> np.ndarray:
        if name not in self.rows.columns:
            raise ValueError(f"score {name!r} is not available; computed scores: {sorted(c for c in self.rows.columns if self.rows[c].dtype.is_float())}")
        return self.rows[name].cast(pl.Float64).fill_null(float("nan")).to_numpy()

    def texts(self) -> list[str]:
        return [f"{i}\n{x}\n{r}" if x else f"{i}\n{r}" for i, x, r in self.rows.select("instruction", "input", "response").iter_rows()]

    def embeddings(self) -> np.ndarray:
        """The rows' text embeddings, computed once (DEITA's filter and the nearest-neighbour reasons share them)."""
        if self._embeddings is None:
            if self.embed is None:
                raise ValueError("no embedder")
            self._embeddings = self.embed(self.texts())
        return self._embeddings


@dataclass
class Picked:
    """A strategy's answer: `order` are row positions in pick order; the arrays are per row."""

    order: list[int]
    gain: np.ndarray  # the value that decided each pick (NaN for rows not picked)
    gain_name: str
    reason: dict[int, str] = field(default_factory=dict)  # why a row was not picked, when known
    ineligible: set[int] = field(default_factory=set)  # rows the method's own rules rule out (not the budget)
    kl: np.ndarray | None = None  # TAGS with a target: each pick's KL improvement
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-row values; those in Strategy.reports go to the reasons
    budget: int | None = None  # the method's own budget where it is not the pool's (Cherry: a share of the rows it keeps)
    budget_rule: str | None = None
    summary: dict[str, float] = field(default_factory=dict)  # subset-level measures for the UI
    selected_reason: dict[int, str] = field(default_factory=dict)  # why a picked row was picked, where more than its gain says
    columns: dict[str, list] = field(default_factory=dict)  # extra per-row reasons-table columns (targeted: the claiming query)
    subset_columns: tuple[str, ...] = ()  # of `columns`, those the subset table carries too


# The reasons-table columns a strategy can fill (besides selected, rank, reason, which every one does).
REASON_FIELDS = frozenset({"gain", "eligible", "kl_contribution", "scores"})


@dataclass(frozen=True)
class Strategy:
    """A selection rule. `pick(candidates, budget, settings)` returns a Picked; a ValueError is a
    clear failure of the run (a missing input, an impossible setting)."""

    name: str
    description: str
    settings: type[Settings]
    version: str
    pick: Callable[[Candidates, Budget, Any], Picked]
    fills: frozenset[str] = frozenset({"gain", "eligible"})  # of REASON_FIELDS
    reports: dict[str, str] = field(default_factory=dict)  # Picked.extra values shown in the reasons' scores: name -> description
    columns: dict[str, str] = field(default_factory=dict)  # Picked.columns it fills: name -> description (the UI's column schema)
    reads: tuple[str, ...] = ()  # heavy score columns it needs loaded (T-SHIRT: noisy_d)
    # Optional graph assets it reads under given settings (targeted: query_set, warmup_adapter,
    # gradient_store); `curate run` materializes them first, other strategies never wait for them.
    needs: Callable[[Any], frozenset[str]] | None = None

    def needed_assets(self, settings: Settings) -> frozenset[str]:
        return self.needs(settings) if self.needs else frozenset()

    def settings_key(self, settings: Settings) -> str:
        return version_hash(self.name, self.version, settings.model_dump(mode="json"))


def unpicked(n: int, picked: list[int]) -> list[int]:
    """Row positions not in `picked`, in order."""
    mask = np.ones(n, dtype=bool)
    mask[picked] = False
    return np.flatnonzero(mask).tolist()


def empty_gain(n: int) -> np.ndarray:
    return np.full(n, np.nan)
