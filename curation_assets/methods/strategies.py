"""Selection strategies behind one interface: candidates in, an ordered pick list and per-row
explanations out. A strategy is a function registered in STRATEGIES; adding one (for example a
targeted selection over gradient features) means writing one function and registering it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from curation_assets.methods import selection as rules
from curation_assets.methods.iterit import greedy_order
from curation_assets.methods.tags_sampler import TreeIndex, kl_greedy, lazy_greedy, linear_greedy, node_mass_matrix, tree_metrics
from curation_assets.methods.tshirt import hierarchical_top_k, tshirt_statistics


@dataclass
class Candidates:
    """The candidate pool in pool order. `rows` holds row_id and whatever the strategies read
    (scores, tags, texts); the tree parts are present when the pool has a tree."""

    rows: pl.DataFrame
    memberships: pl.DataFrame | None = None  # row_id, node_id (leaf), weight
    nodes: pl.DataFrame | None = None  # node_id, parent_id, depth, is_leaf, label
    comparisons: pl.DataFrame | None = None  # row_id, cluster, score
    embed: Callable[[list[str]], np.ndarray] | None = None
    target_leaf_mass: dict[int, float] | None = None  # leaf node_id -> p̂_T, the target set's share
    eos_token: Callable[[], str] | None = None  # the scorer tokenizer's EOS (IterIT's documents)
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
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # further per-row values to report
    budget: int | None = None  # the method's own budget where it is not the pool's (Cherry: a share of the rows it keeps)
    budget_rule: str | None = None
    summary: dict[str, float] = field(default_factory=dict)  # subset-level measures for the UI


def _unpicked(n: int, picked: list[int]) -> list[int]:
    """Row positions not in `picked`, in order."""
    mask = np.ones(n, dtype=bool)
    mask[picked] = False
    return np.flatnonzero(mask).tolist()


def _empty_gain(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def pick_tags(c: Candidates, budget: int, cfg) -> Picked:
    if c.memberships is None or c.nodes is None or c.nodes.is_empty():
        raise ValueError("the tags strategy needs knowledge_tree and tree_memberships")
    n = c.n
    position = {r: i for i, r in enumerate(c.rows["row_id"].to_list())}
    members = c.memberships.filter(pl.col("row_id").is_in(list(position)))
    rows = np.array([position[r] for r in members["row_id"].to_list()], dtype=np.int64)
    leaves = members["node_id"].to_numpy()
    weights = members["weight"].to_numpy()
    quality = tags_quality(c, cfg)
    tree = TreeIndex.from_nodes(c.nodes["node_id"].to_list(), c.nodes["parent_id"].to_list(), c.nodes["depth"].to_list(), {int(k): float(v) for k, v in cfg.level_weights.items()})
    a = node_mass_matrix(rows, leaves, weights, quality, tree, n, cfg.gamma)
    if c.target_leaf_mass:
        if cfg.tags_gain != "exact_lazy":
            raise ValueError("KL alignment runs on exact gains: tags_gain mig_linear is for unaligned parity runs with MIG")
        leaf_ids = c.nodes.filter(pl.col("is_leaf"))["node_id"].to_list()
        col = {leaf: k for k, leaf in enumerate(leaf_ids)}
        lw = sp.csr_matrix((weights, (rows, [col[int(x)] for x in leaves])), shape=(n, len(leaf_ids)))
        target = target_over_leaves(c, leaf_ids, cfg)
        result = kl_greedy(a, lw, target, budget, tree.weights(), lam=cfg.kl_lambda, eps=cfg.kl_eps)
    elif cfg.tags_gain == "mig_linear":
        result = linear_greedy(a, budget, tree.weights())
    elif cfg.tags_gain == "exact_lazy":
        result = lazy_greedy(a, budget, tree.weights())
    else:
        raise ValueError(f"tags_gain must be exact_lazy or mig_linear, not {cfg.tags_gain!r}")
    no_leaf = set(range(n)) - set(rows.tolist())
    reason = {i: "no tree leaf: no information to add" for i in no_leaf}
    last = result.gain[result.order[-1]] if result.order else np.nan
    for i in range(n):
        if i not in reason and np.isnan(result.gain[i]):
            reason[i] = f"budget reached: information gain now {result.final_gain[i]:.4g}, last pick's was {last:.4g}"
    summary = {k: round(v, 4) for k, v in tree_metrics(result.node_mass, tree, c.nodes["node_id"].to_list()).items()}
    return Picked(result.order, result.gain, "information gain", reason, kl=result.kl_gain if c.target_leaf_mass else None, extra={"quality": quality}, summary=summary)


def tags_quality(c: Candidates, cfg) -> np.ndarray:
    """q(x): 1, or a score scaled to [0, 1] (min-max or pool percentile) or as it is; optionally times InsTag's
    complexity factor 1 + log(1 + |leaves|)."""
    if cfg.quality_score:
        values = c.column(cfg.quality_score)
        ok = ~np.isnan(values)
        q = np.zeros(c.n)
        if cfg.quality_transform == "minmax" and ok.any():
            lo, hi = values[ok].min(), values[ok].max()
            q[ok] = (values[ok] - lo) / (hi - lo) if hi > lo else 1.0
        elif cfg.quality_transform == "raw":
            q[ok] = np.maximum(values[ok], 0)
        elif cfg.quality_transform == "percentile":
            ranks = pl.Series(values[ok]).rank("average").to_numpy()
            q[ok] = ranks / ok.sum()
        elif cfg.quality_transform != "minmax":
            raise ValueError(f"quality_transform must be minmax, percentile or raw, not {cfg.quality_transform!r}")
    else:
        q = np.ones(c.n)
    if cfg.complexity_factor and c.memberships is not None:
        counts = c.memberships.group_by("row_id").len()
        n_leaves = c.rows.select("row_id").join(counts, on="row_id", how="left")["len"].fill_null(0).to_numpy()
        q = q * (1 + np.log1p(n_leaves))
    return q


def target_over_leaves(c: Candidates, leaf_ids: list[int], cfg) -> np.ndarray:
    from curation_assets.methods.tags_sampler import target_distribution

    counts = np.array([c.target_leaf_mass.get(leaf, 0.0) for leaf in leaf_ids])
    parents = dict(zip(c.nodes["node_id"].to_list(), c.nodes["parent_id"].to_list()))
    return target_distribution(counts, np.array([parents[leaf] for leaf in leaf_ids]), eps=cfg.kl_eps, mu=cfg.kl_backoff, total=1.0)


def pick_tacos(c: Candidates, budget: int, cfg) -> Picked:
    if c.comparisons is None or c.comparisons.is_empty():
        raise ValueError("the tacos strategy needs comparative_scores: enable the judge (resources.judge.enabled)")
    position = {r: i for i, r in enumerate(c.rows["row_id"].to_list())}
    judged = c.comparisons.drop_nulls("score")
    if cfg.tacos_aggregation == "bradley_terry":
        judged = judged.with_columns(pl.col("row_id").replace_strict(bradley_terry_strengths(judged), default=None).alias("score"))
    elif cfg.tacos_aggregation != "raw":
        raise ValueError(f"tacos_aggregation must be raw or bradley_terry, not {cfg.tacos_aggregation!r}")
    scores = [(position[r], int(k), s) for r, k, s in judged.select("row_id", "cluster", "score").iter_rows() if r in position]
    result = rules.tacos_select(scores, budget, mode=cfg.quota_mode, per_cluster=cfg.per_cluster, fill=cfg.fill_quota)
    # The value shown for a row: its mean over the scores the budget could use (none above 100).
    usable = judged if cfg.tacos_aggregation == "bradley_terry" else judged.filter(pl.col("score") <= 100)
    mean = usable.group_by("row_id").agg(pl.col("score").mean())
    mean_score = c.rows.select("row_id").join(mean, on="row_id", how="left")["score"].fill_null(float("nan")).to_numpy()
    gain = _empty_gain(c.n)
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
    from curation_assets.methods.comparative import bradley_terry

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


def pick_tshirt(c: Candidates, budget: int, cfg) -> Picked:
    if "noisy_d" not in c.rows.columns:
        raise ValueError("the tshirt strategy needs instance_scores with the tshirt method")
    noisy_ifd = [np.asarray(v if v is not None else [], dtype=np.float64) for v in c.rows["noisy_ifd"].to_list()]
    noisy_d = [[np.asarray(d, dtype=np.float32) for d in (v or [])] for v in c.rows["noisy_d"].to_list()]
    stats = tshirt_statistics(noisy_ifd, noisy_d, cfg.tshirt_ratio)
    picked = hierarchical_top_k(stats.avg_noisy_ifd, stats.avg_noisy_sifd, stats.std_noisy_sifd, budget, cfg.tshirt_pool_factor)
    gain = _empty_gain(c.n)
    gain[picked] = stats.std_noisy_sifd[picked]
    pool = set(hierarchical_top_k(stats.avg_noisy_ifd, stats.avg_noisy_sifd, stats.std_noisy_sifd, cfg.tshirt_pool_factor * budget, 1))
    reason, ineligible = {}, set()
    chosen = set(picked)
    for i in range(c.n):
        if i in chosen:
            continue
        if np.isnan(stats.avg_noisy_ifd[i]) or np.isnan(stats.avg_noisy_sifd[i]):
            reason[i] = "no T-SHIRT score (empty, one-token or over-long row)"
            ineligible.add(i)
        elif stats.avg_noisy_ifd[i] >= 1:
            reason[i] = f"mean noisy IFD {stats.avg_noisy_ifd[i]:.4g} >= 1"
            ineligible.add(i)
        elif i not in pool:
            reason[i] = f"mean S-IFD {stats.avg_noisy_sifd[i]:.4g} not in the top {cfg.tshirt_pool_factor}K"
        else:
            reason[i] = f"S-IFD std {stats.std_noisy_sifd[i]:.4g} not among the K smallest"
    extra = {"avg_noisy_sifd": stats.avg_noisy_sifd, "std_noisy_sifd": stats.std_noisy_sifd, "tshirt_tau": np.full(c.n, stats.tau)}
    return Picked(picked, gain, "S-IFD std over neighbours", reason, ineligible, extra=extra)


def pick_deita(c: Candidates, budget: int, cfg) -> Picked:
    if c.embed is None:
        raise ValueError("the deita strategy needs an embedder")
    score = np.ones(c.n)
    for key in cfg.deita_keys:
        score = score * c.column(key)
    result = rules.deita_filter(c.embeddings(), score, cfg.deita_threshold, budget, cfg.deita_batch_size)
    gain = _empty_gain(c.n)
    gain[result.selected] = score[result.selected]
    ids = c.rows["row_id"].to_list()
    reason = {row: f"cosine {sim:.3f} > {cfg.deita_threshold} to the already selected {ids[partner]}" for row, (partner, sim) in result.rejected_by.items()}
    scanned = set(result.selected) | set(result.rejected_by)
    for i in range(c.n):
        if i not in scanned:
            reason[i] = "budget reached before this row's score" if not np.isnan(score[i]) else "no score"
    ineligible = set(result.rejected_by) | {i for i in range(c.n) if np.isnan(score[i])}
    return Picked(result.selected, gain, f"score ({' x '.join(cfg.deita_keys)})", reason, ineligible)


def pick_iterit(c: Candidates, budget: int, cfg) -> Picked:
    scores = c.column("iterit_ifd").astype(np.float32)
    eos = cfg.iterit_eos if cfg.iterit_eos is not None else c.eos_token() if c.eos_token else ""  # IterIT: output + tokenizer.eos_token
    docs = [r + eos for r in c.rows["response"].to_list()]
    order = greedy_order(scores, docs, range(c.n), c.n, budget, gamma=cfg.iterit_gamma)
    picked = [i for i in order[:budget] if scores[i] < 1]
    gain = _empty_gain(c.n)
    gain[picked] = scores[picked]
    reason = {i: ("IFD >= 1" if scores[i] >= 1 else "no IFD" if np.isnan(scores[i]) else "diversity-weighted score below the budget") for i in _unpicked(c.n, picked)}
    return Picked(picked, gain, "IterIT IFD", reason, {i for i in range(c.n) if not scores[i] < 1})


def pick_superfiltering(c: Candidates, budget: int, cfg) -> Picked:
    ifd = c.column("ifd_ppl")
    # select_data.py multiplies its rate by a hard-coded 52,002 (Alpaca); reference_pool_size
    # reproduces that count for a rate, where the default takes the rate of the candidates.
    reference_size = cfg.reference_pool_size
    own_budget = rules.superfiltering_count(cfg.budget, reference_size) if reference_size and cfg.budget <= 1 else None
    picked = rules.superfiltering(ifd, budget if own_budget is None else own_budget, cfg.ifd_threshold)
    gain = _empty_gain(c.n)
    gain[picked] = ifd[picked]
    reason = {i: ("no IFD" if np.isnan(ifd[i]) else f"IFD {ifd[i]:.4g} >= {cfg.ifd_threshold}" if ifd[i] >= cfg.ifd_threshold else "IFD below the budget") for i in _unpicked(c.n, picked)}
    rule = f"int({reference_size:,} x {cfg.budget:.4g}) = {own_budget:,} rows (reference_pool_size, as select_data.py)" if own_budget is not None else None
    return Picked(picked, gain, "IFD (PPL ratio)", reason, {i for i in range(c.n) if not ifd[i] < cfg.ifd_threshold}, budget=own_budget, budget_rule=rule)


def pick_cherry(c: Candidates, budget: int, cfg) -> Picked:
    rate = c.column("ifd_loss")
    skip = c.rows["cherry_skip"].to_list() if "cherry_skip" in c.rows.columns else [None] * c.n
    kept = np.array([s is None for s in skip])
    # data_by_IFD.py: a fractional budget is a share of the rows its skip rules keep, not of the pool.
    fraction = cfg.budget if cfg.budget <= 1 else None
    picked, n = rules.cherry(rate, kept, budget_rate=fraction, count=None if fraction else budget)
    picked = sorted(picked, key=lambda i: -rate[i])
    gain = _empty_gain(c.n)
    gain[picked] = rate[picked]
    below = f"IFD below the budget ({n:,} of {int(kept.sum()):,} rows kept by Cherry's rules)"
    reason = {i: (f"skipped by Cherry's rule: {skip[i]}" if skip[i] else "no IFD" if np.isnan(rate[i]) else below) for i in _unpicked(c.n, picked)}
    rule = f"{fraction:.4g} of {int(kept.sum()):,} rows kept by Cherry's rules = {n:,} rows" if fraction else None
    return Picked(picked, gain, "IFD (loss ratio)", reason, {i for i in range(c.n) if not kept[i] or np.isnan(rate[i])}, budget=n if fraction else None, budget_rule=rule)


def pick_top_k(c: Candidates, budget: int, cfg) -> Picked:
    values = c.column(cfg.score)
    valid = np.ones(c.n, dtype=bool)
    if cfg.score_below is not None:
        valid &= values < cfg.score_below
    picked = rules.top_k(values, budget, descending=cfg.descending, valid=valid)
    gain = _empty_gain(c.n)
    gain[picked] = values[picked]
    reason = {i: ("no score" if np.isnan(values[i]) else f"{cfg.score} {values[i]:.4g} not below {cfg.score_below}" if not valid[i] else f"{cfg.score} below the budget") for i in _unpicked(c.n, picked)}
    return Picked(picked, gain, cfg.score, reason, {i for i in range(c.n) if np.isnan(values[i]) or not valid[i]})


def pick_instag(c: Candidates, budget: int, cfg) -> Picked:
    if "canonical_tags" not in c.rows.columns:
        raise ValueError("the instag strategy needs normalized_tags")
    tags = [t or [] for t in c.rows["canonical_tags"].to_list()]
    picked, new = rules.instag(tags, budget)
    gain = _empty_gain(c.n)
    gain[picked] = new
    untagged = {i for i, t in enumerate(tags) if not t}
    reason = {i: "no canonical tags" if i in untagged else "budget reached before it added a tag in its pass" for i in _unpicked(c.n, picked)}
    return Picked(picked, gain, "new tags in its pass", reason, untagged)


def pick_random(c: Candidates, budget: int, cfg) -> Picked:
    picked = rules.random_subset(c.n, budget, cfg.seed)
    return Picked(picked, _empty_gain(c.n), "random draw", {i: f"not drawn (seed {cfg.seed})" for i in _unpicked(c.n, picked)})


STRATEGIES: dict[str, Callable[[Candidates, int, object], Picked]] = {
    "tags": pick_tags,
    "tacos": pick_tacos,
    "instag": pick_instag,
    "tshirt": pick_tshirt,
    "deita": pick_deita,
    "iterit": pick_iterit,
    "superfiltering": pick_superfiltering,
    "cherry": pick_cherry,
    "top_k": pick_top_k,
    "random": pick_random,
}
