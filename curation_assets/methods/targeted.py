"""Targeted selection as registered strategies (research/targeted.md §4): one of the TIS algorithms
over a representation's query x candidate similarity, with a reason per row (the query and task
that claimed each pick, its round or rank and similarity; for the rest, their nearest query).

Each algorithm is a `Strategy` (round_robin, doubly_greedy, uot, knn_uniform, knn_kde) whose
settings name the representation (less, rds, embed, bm25). The similarity comes from
`Candidates.targeted(representation)`, which the asset layer builds from the gradient store, RDS+
features, the embedder or BM25 (curation_assets/targeted_inputs.py)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from curation_assets.methods import tis_selection as tis
from curation_assets.methods.plugin import Budget, Candidates, Picked, Settings, Strategy

VERSION = "1"
ALGORITHMS = ("round_robin", "doubly_greedy", "uot", "knn_uniform", "knn_kde")
REPRESENTATIONS = ("less", "rds", "embed", "bm25")
LESS_ASSETS = frozenset({"query_set", "warmup_adapter", "gradient_store"})


class TargetedSettings(Settings):
    """Settings of every targeted strategy: the representation its similarity comes from."""

    representation: Literal["less", "rds", "embed", "bm25"] = Field("less", description="less (gradient store), rds (RDS+ of the target model), embed (the embedder), bm25.")


class UotSettings(TargetedSettings):
    uot_candidates_per_query: int | None = Field(2000, description="The kernel kept on each query's top candidates from faiss; null = POT on the dense matrix (small pools).")


class KnnUniformSettings(TargetedSettings):
    knn_neighbours: int = Field(tis.TSDS_L, description="Neighbours prefetched per query (TSDS L = 5000).")


class KnnKdeSettings(TargetedSettings):
    kde_strict_guard: bool = Field(False, description="Fail, as the reference does, when fewer than 10,000 candidates get mass (default: a warning).")


SETTINGS = {"round_robin": TargetedSettings, "doubly_greedy": TargetedSettings, "uot": UotSettings, "knn_uniform": KnnUniformSettings, "knn_kde": KnnKdeSettings}


@dataclass
class TargetedInputs:
    """A similarity over the eligible candidates (index j = pool position eligible[j]) and the queries."""

    source: object  # DenseSimilarity, FaissSimilarity or BM25Similarity
    eligible: np.ndarray  # pool positions that have a representation
    query_ids: np.ndarray
    query_tasks: list[str]
    representation: str  # e.g. "less (4 checkpoints, LR weights 0.42/0.32/0.19/0.06)"
    kde_features: Callable | None = None  # knn_kde's neighbour similarities among candidates
    missing: dict[int, str] = field(default_factory=dict)  # pool position -> why it has no representation


@dataclass
class TargetedPick:
    """What the strategy hands the reasons table: picks in order and per-row facts (pool order)."""

    order: list[int]
    gain: np.ndarray  # the algorithm's score of each pick (NaN elsewhere)
    gain_name: str
    reason: dict[int, str]  # every row: why picked or not
    ineligible: set[int]
    columns: dict[str, list]  # reasons-table columns
    nearest_similarity: np.ndarray  # each row's best similarity to any query
    nearest_task: list[str | None]
    claimed_task: list[str | None]
    info: dict


def run(algorithm: str, inputs: TargetedInputs, budget: int, settings: TargetedSettings, n: int) -> TargetedPick:
    """Pick `budget` of the `n` pool rows with `algorithm`; rows without a representation are ineligible."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown targeted algorithm {algorithm!r}; known: {ALGORITHMS}")
    src = inputs.source
    k = min(budget, src.n_candidates)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if algorithm == "round_robin":
            result = tis.round_robin(src, k)
        elif algorithm == "doubly_greedy":
            result = tis.doubly_greedy(src, k)
        elif algorithm == "uot":
            result = tis.uot(src, k, candidates_per_query=settings.uot_candidates_per_query)
        elif algorithm == "knn_uniform":
            result = tis.knn_uniform(src, k, neighbours=settings.knn_neighbours)
        else:
            if inputs.kde_features is None:
                raise ValueError("knn_kde needs candidate features (representations less, rds or embed)")
            result = tis.knn_kde(src, inputs.kde_features, k, strict_guard=settings.kde_strict_guard)
    best = src.column_best()
    qid, tasks, elig = inputs.query_ids, inputs.query_tasks, inputs.eligible
    order = elig[result.order].tolist()
    gain = np.full(n, np.nan)
    gain[order] = result.score
    near_sim = np.full(n, np.nan)
    near_sim[elig] = best.value
    near_query = np.full(n, -1, dtype=np.int64)
    near_query[elig] = best.query
    claimed = {p: r for r, p in enumerate(order)}
    claimed_query = [None] * n
    claimed_sim = [None] * n
    rounds = [None] * n
    reason: dict[int, str] = {}
    last = float(result.similarity[-1]) if len(order) else float("nan")
    for r, p in enumerate(order):
        q = int(result.query[r])
        claimed_query[p], claimed_sim[p] = int(qid[q]), float(result.similarity[r])
        rounds[p] = int(result.round[r]) + 1 if result.round is not None else r + 1  # 1-based, as in the reason
        step = f"round {result.round[r] + 1}" if result.round is not None else f"rank {r + 1} by {result.score_name} {result.score[r]:.4g}"
        reason[p] = f"{algorithm} {step}: claimed by query {qid[q]} ({tasks[q]}), similarity {result.similarity[r]:.4f}, {inputs.representation}"
    for j, p in enumerate(elig.tolist()):
        if p not in claimed:
            q = int(best.query[j])
            reason[p] = (f"not selected by {algorithm}: nearest query {qid[q]} ({tasks[q]}) at similarity {best.value[j]:.4f}, "
                         f"every other query farther; the last pick's similarity was {last:.4f} ({inputs.representation})")
    for p, why in inputs.missing.items():
        reason[p] = f"no {inputs.representation.split()[0]} representation: {why}"
    near_task = [tasks[q] if q >= 0 else None for q in near_query]
    task_of = dict(zip(qid.tolist(), tasks))
    claimed_task = [task_of[c] if c is not None else None for c in claimed_query]
    columns = {
        "target_query": claimed_query,
        "target_task": claimed_task,
        "target_similarity": claimed_sim,
        "target_round": rounds,
        "nearest_query": [int(qid[q]) if q >= 0 else None for q in near_query],
        "nearest_query_similarity": [None if np.isnan(x) else float(x) for x in near_sim],
        "nearest_task": near_task,
        "representation": [inputs.representation] * n,
    }
    info = {**(result.info or {}), "warnings": [str(w.message) for w in caught]}
    return TargetedPick(order, gain, result.score_name, reason, set(inputs.missing), columns, near_sim, near_task, claimed_task, info)


def _pick(algorithm: str) -> Callable[[Candidates, Budget, TargetedSettings], Picked]:
    def pick(c: Candidates, budget: Budget, s: TargetedSettings) -> Picked:
        if c.targeted is None:
            raise ValueError(f"{algorithm} needs the target queries (query_set) and a representation; this run has none")
        result = run(algorithm, c.targeted(s.representation), budget.rows, s, c.n)
        for message in result.info.get("warnings", []):
            c.log(f"warning: {message}")
        picked = set(result.order)
        return Picked(
            result.order, result.gain, result.gain_name,
            reason={i: r for i, r in result.reason.items() if i not in picked},
            ineligible=result.ineligible,
            selected_reason={i: result.reason[i] for i in result.order},
            columns=result.columns,
            subset_columns=("target_task", "target_query", "target_similarity"),
            summary={k: float(v) for k, v in result.info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        )

    return pick


def _needs(s: TargetedSettings) -> frozenset[str]:
    return LESS_ASSETS if s.representation == "less" else frozenset({"query_set"})


COLUMNS = {
    "target_query": "query_id of the query that claimed the row; null when not selected.",
    "target_task": "Task of that query.",
    "target_similarity": "The row's similarity to that query (representation, checkpoint-weighted).",
    "target_round": "Round-robin round that picked it (other algorithms: its rank), 1-based.",
    "nearest_query": "query_id of the query most similar to the row, picked or not.",
    "nearest_query_similarity": "Similarity to that query: how far the row is from every query.",
    "nearest_task": "Task of the nearest query.",
    "representation": "The representation compared (less with its checkpoints, rds, embed, bm25).",
}

DESCRIPTIONS = {
    "round_robin": "TIS round robin: each query in turn claims its most similar unclaimed row.",
    "doubly_greedy": "TIS doubly greedy: rows by their highest similarity to any query.",
    "uot": "TIS unbalanced optimal transport (POT) from the queries to the pool; rows by the mass they receive.",
    "knn_uniform": "TSDS k-NN (uniform): mass 1/(K M) on each query's K nearest rows, K by the TSDS stop rule.",
    "knn_kde": "TSDS k-NN with the KDE density correction among candidates.",
}

TARGETED_STRATEGIES = tuple(
    Strategy(name=a, description=DESCRIPTIONS[a], settings=SETTINGS[a], version=VERSION, pick=_pick(a), fills=frozenset({"gain", "eligible"}), columns=COLUMNS, needs=_needs)
    for a in ALGORITHMS
)
