"""TAGS (research/tags-tacos.md §2): the `tags` strategy, tree information gain under a lazy greedy
(or MIG's first-order gain), optionally aligned by KL to a target domain whose prompts are tagged
and grounded on the tree here (§2.7). The samplers are in tags_sampler.py, the tree in tree.py."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import Field

from curation_assets.methods.ingest import IngestOptions, ingest_file, load_options
from curation_assets.methods.plugin import Budget, Candidates, Picked, Settings, Strategy
from curation_assets.methods.tag_normalization import rule_normalize
from curation_assets.methods.tags_sampler import TreeIndex, kl_greedy, lazy_greedy, linear_greedy, node_mass_matrix, target_distribution, tree_metrics
from curation_assets.methods.tree import ground_vectors

VERSION = "1"


class TagsSettings(Settings):
    tags_gain: Literal["exact_lazy", "mig_linear"] = Field("exact_lazy", description="exact_lazy (exact gains, CELF) or mig_linear (MIG's first-order gain, every row each step).")
    quality_score: str | None = Field(None, description="Score used as quality q(x); null = 1 for every row.")
    quality_transform: Literal["minmax", "percentile", "raw"] = Field("minmax", description="minmax (the notes' \"scaled to [0,1]\"), percentile (pool rank, robust to outliers) or raw.")
    complexity_factor: bool = Field(False, description="Multiply q by 1 + log(1 + leaves) (InsTag complexity).")
    gamma: float = Field(1.0, description="Discount of a leaf's mass per level up the tree.")
    level_weights: dict[str, float] = Field({}, description="Node weight per depth (default 1).")
    target_file: str | None = Field(None, description="Prompts of the target domain, any format raw_pool reads.")
    target_leaves: list[str] = Field([], description="Node labels of the target domain (their leaves share the mass).")
    kl_lambda: float = Field(1.0, description="Weight of the KL alignment term (after per-step normalization).")
    kl_eps: float = Field(1e-3, description="Add-epsilon smoothing of the leaf distributions.")
    kl_backoff: float = Field(0.2, description="Share of a target leaf's parent mass spread to its siblings.")
    tau: float = Field(0.75, description="A target tag less similar than this to every leaf grounds on an internal node.")


def pick(c: Candidates, budget: Budget, s: TagsSettings) -> Picked:
    if c.memberships is None or c.nodes is None or c.nodes.is_empty():
        raise ValueError("the tags strategy needs knowledge_tree and tree_memberships")
    n = c.n
    position = {r: i for i, r in enumerate(c.rows["row_id"].to_list())}
    members = c.memberships.filter(pl.col("row_id").is_in(list(position)))
    rows = np.array([position[r] for r in members["row_id"].to_list()], dtype=np.int64)
    leaves = members["node_id"].to_numpy()
    weights = members["weight"].to_numpy()
    quality = tags_quality(c, s)
    tree = TreeIndex.from_nodes(c.nodes["node_id"].to_list(), c.nodes["parent_id"].to_list(), c.nodes["depth"].to_list(), {int(k): float(v) for k, v in s.level_weights.items()})
    a = node_mass_matrix(rows, leaves, weights, quality, tree, n, s.gamma)
    target_mass = target_leaf_mass(c, s) if (s.target_file or s.target_leaves) else None
    if target_mass:
        if s.tags_gain != "exact_lazy":
            raise ValueError("KL alignment runs on exact gains: tags_gain mig_linear is for unaligned parity runs with MIG")
        leaf_ids = c.nodes.filter(pl.col("is_leaf"))["node_id"].to_list()
        col = {leaf: k for k, leaf in enumerate(leaf_ids)}
        lw = sp.csr_matrix((weights, (rows, [col[int(x)] for x in leaves])), shape=(n, len(leaf_ids)))
        target = target_over_leaves(c, target_mass, leaf_ids, s)
        result = kl_greedy(a, lw, target, budget.rows, tree.weights(), lam=s.kl_lambda, eps=s.kl_eps)
    elif s.tags_gain == "mig_linear":
        result = linear_greedy(a, budget.rows, tree.weights())
    else:
        result = lazy_greedy(a, budget.rows, tree.weights())
    no_leaf = set(range(n)) - set(rows.tolist())
    reason = {i: "no tree leaf: no information to add" for i in no_leaf}
    last = result.gain[result.order[-1]] if result.order else np.nan
    for i in range(n):
        if i not in reason and np.isnan(result.gain[i]):
            reason[i] = f"budget reached: information gain now {result.final_gain[i]:.4g}, last pick's was {last:.4g}"
    summary = {k: round(v, 4) for k, v in tree_metrics(result.node_mass, tree, c.nodes["node_id"].to_list()).items()}
    return Picked(result.order, result.gain, "information gain", reason, kl=result.kl_gain if target_mass else None, extra={"quality": quality}, summary=summary)


def tags_quality(c: Candidates, s: TagsSettings) -> np.ndarray:
    """q(x): 1, or a score scaled to [0, 1] (min-max or pool percentile) or as it is; optionally times InsTag's
    complexity factor 1 + log(1 + |leaves|)."""
    if s.quality_score:
        values = c.column(s.quality_score)
        ok = ~np.isnan(values)
        q = np.zeros(c.n)
        if s.quality_transform == "minmax" and ok.any():
            lo, hi = values[ok].min(), values[ok].max()
            q[ok] = (values[ok] - lo) / (hi - lo) if hi > lo else 1.0
        elif s.quality_transform == "raw":
            q[ok] = np.maximum(values[ok], 0)
        elif s.quality_transform == "percentile":
            ranks = pl.Series(values[ok]).rank("average").to_numpy()
            q[ok] = ranks / ok.sum()
    else:
        q = np.ones(c.n)
    if s.complexity_factor and c.memberships is not None:
        counts = c.memberships.group_by("row_id").len()
        n_leaves = c.rows.select("row_id").join(counts, on="row_id", how="left")["len"].fill_null(0).to_numpy()
        q = q * (1 + np.log1p(n_leaves))
    return q


def target_over_leaves(c: Candidates, mass: dict[int, float], leaf_ids: list[int], s: TagsSettings) -> np.ndarray:
    counts = np.array([mass.get(leaf, 0.0) for leaf in leaf_ids])
    parents = dict(zip(c.nodes["node_id"].to_list(), c.nodes["parent_id"].to_list()))
    return target_distribution(counts, np.array([parents[leaf] for leaf in leaf_ids]), eps=s.kl_eps, mu=s.kl_backoff, total=1.0)


def target_leaf_mass(c: Candidates, s: TagsSettings) -> dict[int, float]:
    """p̂_T over leaves (tags-tacos.md §2.7): each target prompt x gives each node its tags ground
    on 1/|nodes of x| (a node inside the tree shares that over its leaves), summed and divided by
    |D_T|, the prompts with no grounded tag included. A target_leaves list counts as one prompt."""
    nodes, vocabulary = c.nodes, c.vocabulary if c.vocabulary is not None else pl.DataFrame()
    leaf_of_label = dict(zip(nodes.filter(pl.col("is_leaf"))["label"], nodes.filter(pl.col("is_leaf"))["node_id"]))
    below = {node: [leaf_of_label[t] for t in members if t in leaf_of_label] for node, members in zip(nodes["node_id"], nodes["member_tags"])}
    target_sets: list[set[int]] = []  # grounded nodes per target prompt
    if s.target_leaves:
        label_node = dict(zip(nodes["label"], nodes["node_id"]))
        missing = [t for t in s.target_leaves if t not in label_node]
        if missing:
            raise ValueError(f"target_leaves not in the tree: {missing[:10]}")
        target_sets.append({label_node[t] for t in s.target_leaves})
    if s.target_file:
        if c.tag is None or c.embed is None:
            raise ValueError("a target_file needs the tagger and the embedder")
        prompts = read_target_prompts(s.target_file)
        results = c.tag(prompts)
        stem = vocabulary["stem"][0] if vocabulary.height else "word"
        by_raw = dict(zip(vocabulary["raw_tag"], vocabulary["tree_leaf"]))
        by_key = {k: t for k, t in zip(vocabulary["normalized"], vocabulary["tree_leaf"]) if t is not None}
        leaf_label = {t: by_raw.get(t) or by_key.get(rule_normalize(t, stem)) for r in results for t in (x["tag"] for x in r.value or [])}
        unknown = sorted(t for t, label in leaf_label.items() if label not in leaf_of_label)
        grounded = {}
        if unknown:
            ids, _ = ground_vectors(c.embed([t.lower() for t in unknown]), nodes, s.tau)
            grounded = {t: int(i) for t, i in zip(unknown, ids.tolist()) if i >= 0}

        def node_of(tag: str) -> int | None:
            return leaf_of_label[leaf_label[tag]] if leaf_label[tag] in leaf_of_label else grounded.get(tag)

        target_sets += [{node_of(x["tag"]) for x in r.value or []} - {None} for r in results]
        c.log(f"target: {len(prompts)} prompts, {len(unknown)} tags outside the tree grounded by similarity")
    mass: dict[int, float] = {}
    for grounded_nodes in target_sets:
        for node in grounded_nodes:
            leaves = below[node] or [node]
            for leaf in leaves:
                mass[leaf] = mass.get(leaf, 0.0) + 1.0 / (len(grounded_nodes) * len(leaves) * len(target_sets))
    if not mass:
        raise ValueError("no tag of the target prompts could be grounded on the tree: KL alignment has no target")
    return mass


def read_target_prompts(path: str) -> list[str]:
    """The prompts of a target file in any format raw_pool reads (responses not needed)."""
    opts = load_options(path, IngestOptions(allow_empty_response=True))
    with tempfile.TemporaryDirectory() as tmp:
        summary = ingest_file(path, opts, partition="target", source_file=Path(path).name, staging_dir=tmp)
        prompts = [p for part in summary.pool_parts for p in pl.read_parquet(part)["instruction"].to_list()]
    if not prompts:
        raise ValueError(f"target file {path} holds no readable prompts")
    return prompts


TAGS = Strategy(
    name="tags",
    description="TAGS: tree information gain, lazy greedy; optional KL alignment to a target file or leaf list.",
    settings=TagsSettings,
    version=VERSION,
    pick=pick,
    fills=frozenset({"gain", "eligible", "kl_contribution"}),
)
