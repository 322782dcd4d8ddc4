"""The TAGS knowledge tree (research/tags-tacos.md §2.3-2.4): bottom-up clustering of canonical tags.

Leaves are leaf concepts: synonymous tags grouped at a cosine near 0.9 (`leaf_concepts`,
`tree_leaves`). Each level clusters the current nodes' embeddings with spherical k-means into
ceil(n / branching) parents, weighting each node by its rows (embedding-only, the default), or,
with a chat model, runs Clio's refinement (`clio_level`: summarize neighbourhoods into parent
names, merge duplicate names, assign children by majority vote with a cosine fallback, rename).
A parent's vector is the row-weighted mean of its children's, re-normalized. Levels stop at <=
`top` nodes or `max_depth` levels; a single root goes on top. A chain of single-child nodes (each
repeating its child's label) is collapsed. `tree_quality` measures the result.

Grounding (§2.4): a row's leaves are its canonical tags. A tag outside the tree (a target-set tag)
maps to its nearest leaf by cosine, or to the nearest internal node when that leaf is less similar
than `tau` (0.75).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

ROOT = 0


@dataclass(frozen=True)
class TreeSettings:
    branching: int = 5
    top: int = 20
    max_depth: int = 8
    seed: int = 0
    kmeans_iterations: int = 25
    neighbourhood: int = 40  # Clio refinement: nodes per neighbourhood (Clio G.7: about 40)
    votes: int = 1  # Clio refinement: assignment answers per child (Clio: 5), majority wins
    dedup_threshold: float = 0.9  # Clio refinement: proposed parent names this similar merge


# A chat model asked many prompts at once: for each prompt, parse(answer) or None when it failed.
Ask = Callable[[list[str], Callable[[str], object]], list[object | None]]

SUMMARIZE_PROMPT = (
    "Below are related topics from a taxonomy of instruction data:\n{children}\n"
    "Propose {n} broader parent topic(s) that together cover all of them. Answer with one name of 2 to 5 "
    "words per line and nothing else."
)
ASSIGN_PROMPT = (
    "Topic: {child}\nWhich of these parent topics fits it best?\n{parents}\nAnswer with the number only."
)
RENAME_PROMPT = (
    "The following topics are the children of one node in a taxonomy of instruction data:\n{children}\n"
    "Name their common parent topic in 2 to 5 words. Answer with the name only."
)
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.):]|#+)\s*")
_INT = re.compile(r"\d+")


def parse_names(text: str) -> list[str]:
    """Names, one per line, bullets and numbering removed; at least one name of <= 80 characters."""
    names = [_BULLET.sub("", line).strip(" \"'*.`") for line in (text or "").splitlines()]
    names = [n for n in names if n and len(n) <= 80]
    if not names:
        raise ValueError("expected names, one per line")
    return list(dict.fromkeys(names))


def parse_name(text: str) -> str:
    return parse_names(text)[0]


def parse_choice(count: int) -> Callable[[str], int]:
    """The first integer of the answer, 1..count, as a 0-based index."""

    def parse(text: str) -> int:
        for match in _INT.finditer(text or ""):
            if 1 <= int(match.group()) <= count:
                return int(match.group()) - 1
        raise ValueError(f"expected a number from 1 to {count}")

    return parse


def _distinct(names: list[str]) -> list[str]:
    """Names in order, each case-folded spelling once (its first spelling)."""
    first: dict[str, str] = {}
    for name in names:
        first.setdefault(name.casefold(), name)
    return list(first.values())


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {t}" for t in items)


def clio_level(
    labels: list[str], vectors: np.ndarray, rows: np.ndarray, settings: TreeSettings, ask: Ask, embed: Callable[[list[str]], np.ndarray], seed: int
) -> tuple[np.ndarray, list[str]]:
    """One Clio-style level (tags-tacos.md §2.3): parents of the current nodes and their names.

    1. Neighbourhoods: spherical k-means into ceil(n / neighbourhood) groups.
    2. Summarize: the LLM proposes max(1, len(group) // branching) parent names per group (a failed
       answer falls back to the group's most used children's labels).
    3. Deduplicate: names equal after case folding, or with embeddings at cosine >=
       dedup_threshold, merge (leader grouping, the most proposed first).
    4. Assign: each child picks one of its group's parents, `votes` answers, majority wins; with no
       valid answer, the parent whose name is nearest by cosine.
    5. Drop empty parents; rename each parent from at most 10 of its children (most rows first),
       keeping the proposed name when the answer fails.
    Returns (parent index per node, parent names).
    """
    n = len(labels)
    groups = spherical_kmeans(vectors, math.ceil(n / settings.neighbourhood), np.maximum(rows, 1.0), seed, settings.kmeans_iterations)
    members = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]
    members = [m[np.argsort(-rows[m], kind="stable")] for m in members]
    wanted = [max(1, len(m) // settings.branching) for m in members]
    proposals = ask([SUMMARIZE_PROMPT.format(children=_bullets([labels[i] for i in m]), n=w) for m, w in zip(members, wanted)], parse_names)
    proposed = [(_distinct(p)[:w] if p else [labels[i] for i in m[:w]]) for p, m, w in zip(proposals, members, wanted)]
    # Deduplicate across groups.
    flat = [name for names in proposed for name in names]
    folded = list(dict.fromkeys(name.casefold() for name in flat))
    votes_for = np.array([sum(1 for x in flat if x.casefold() == f) for f in folded], dtype=np.float64)
    spelled = {f: next(x for x in flat if x.casefold() == f) for f in folded}
    leader = leaf_concepts(folded, embed([spelled[f] for f in folded]), votes_for, settings.dedup_threshold)
    canon = {f: spelled[lead] for f, lead in zip(folded, leader)}
    names = list(dict.fromkeys(canon.values()))
    name_index = {name: k for k, name in enumerate(names)}
    name_vecs = _normalize(embed(names))
    # Assign each child among its group's (deduplicated) parents.
    options = [list(dict.fromkeys(name_index[canon[x.casefold()]] for x in names_g)) for names_g in proposed]
    assign = np.zeros(n, dtype=np.int64)
    prompts, targets = [], []
    for g, m in enumerate(members):
        for i in m:
            if len(options[g]) == 1:
                assign[i] = options[g][0]
                continue
            listing = "\n".join(f"{k + 1}. {names[o]}" for k, o in enumerate(options[g]))
            prompts += [ASSIGN_PROMPT.format(child=labels[i], parents=listing)] * settings.votes
            targets += [(i, g)] * settings.votes
    answers = ask(prompts, str) if prompts else []
    tally: dict[int, list[int]] = {}
    for (i, g), text in zip(targets, answers):
        try:
            tally.setdefault(i, []).append(options[g][parse_choice(len(options[g]))(text)])
        except Exception:  # an off-format answer is no vote
            tally.setdefault(i, [])
    for i, chosen in tally.items():
        g = int(groups[i])
        if chosen:
            values, counts = np.unique(chosen, return_counts=True)
            assign[i] = int(values[np.argmax(counts)])
        else:
            assign[i] = options[g][int(np.argmax(name_vecs[options[g]] @ vectors[i]))]
    used = sorted(set(assign.tolist()), key=lambda k: int(np.flatnonzero(assign == k)[0]))
    remap = {k: j for j, k in enumerate(used)}
    assign = np.array([remap[k] for k in assign.tolist()], dtype=np.int64)
    parent_names = [names[k] for k in used]
    kids = [np.flatnonzero(assign == j) for j in range(len(used))]
    kids = [k[np.argsort(-rows[k], kind="stable")][:10] for k in kids]
    renamed = ask([RENAME_PROMPT.format(children=_bullets([labels[i] for i in k])) for k in kids], parse_name)
    return assign, [r if r else name for r, name in zip(renamed, parent_names)]


def leaf_concepts(labels: list[str], vectors: np.ndarray, rows: np.ndarray, threshold: float = 0.9) -> list[str]:
    """The leaf concept of each tag: tags whose embeddings have cosine >= `threshold` to a more
    used tag join it (tags-tacos.md §2.3: the first level groups synonyms, embedding-only, at the
    cosine near 0.9 that MIG uses for its label graph).

    Leader clustering in order of use (rows, then label): a tag joins the most similar earlier
    leader it reaches at `threshold`, else it leads a concept of its own. Every member is that
    similar to its concept's label, so a concept cannot drift along a chain of near neighbours as
    single-linkage grouping would. Exact (faiss range search); returns the leader label per tag.
    """
    import faiss

    n = len(labels)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-float(rows[i]), labels[i]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    vecs = np.ascontiguousarray(_normalize(np.asarray(vectors, dtype=np.float32)))
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    lims, sims, ids = index.range_search(vecs, float(threshold) - 1e-6)
    leader = np.full(n, -1, dtype=np.int64)
    for i in order:
        near, sim = ids[lims[i] : lims[i + 1]], sims[lims[i] : lims[i + 1]]
        ok = (rank[near] < rank[i]) & (leader[near] == near)  # earlier tags that lead a concept
        leader[i] = int(near[ok][np.argmax(sim[ok])]) if ok.any() else i
    return [labels[j] for j in leader]


def tree_leaves(
    rows: pl.DataFrame, vocabulary: pl.DataFrame, encode: Callable[[list[str]], np.ndarray], threshold: float, min_rows: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Leaf concepts over every normalized tag, rare ones included, then the leaves worth a node.

    `rows` holds row_id and raw_tags; `vocabulary` maps raw_tag to its normalized key and canonical
    tag (tag_normalization). A tag's label is its canonical tag where it passed the frequency
    filter, else its commonest spelling. Labels group into concepts (`leaf_concepts`); a concept
    used by at least `min_rows` rows is a leaf. Returns (row_id, tree_tags: the row's leaves) and
    the vocabulary with `tree_leaf` (the raw tag's leaf, null when it has none).
    """
    spelling = (
        vocabulary.filter(pl.col("normalized") != "").sort(["raw_count", "raw_tag"], descending=[True, False])
        .group_by("normalized", maintain_order=True).agg(pl.col("raw_tag").first().alias("spelling"), pl.col("canonical_tag").drop_nulls().first().alias("canonical"))
    )
    label_of = spelling.select("normalized", pl.coalesce("canonical", "spelling").alias("label"))
    keyed = vocabulary.select("raw_tag", "normalized").join(label_of, on="normalized")
    pairs = rows.select("row_id", pl.col("raw_tags").alias("raw_tag")).explode("raw_tag").drop_nulls().join(keyed, on="raw_tag").select("row_id", "label").unique()
    counts = pairs.group_by("label").agg(pl.len().alias("rows")).sort("label")
    labels = counts["label"].to_list()
    concept = dict(zip(labels, leaf_concepts(labels, encode([t.lower() for t in labels]), counts["rows"].to_numpy(), threshold))) if labels else {}
    leaves = pairs.with_columns(pl.col("label").replace_strict(concept, return_dtype=pl.String).alias("leaf")).select("row_id", "leaf").unique()
    kept = leaves.group_by("leaf").len().filter(pl.col("len") >= min_rows)["leaf"]
    leaves = leaves.filter(pl.col("leaf").is_in(kept.implode()))
    row_leaves = rows.select("row_id").join(
        leaves.group_by("row_id").agg(pl.col("leaf").unique().sort().alias("tree_tags")), on="row_id", how="left", maintain_order="left"
    ).with_columns(pl.col("tree_tags").fill_null(pl.lit([], dtype=pl.List(pl.String))))
    leaf_of = {label: leaf for label, leaf in concept.items() if leaf in set(kept.to_list())}
    vocab = vocabulary.join(keyed.select("raw_tag", "label"), on="raw_tag", how="left", maintain_order="left").with_columns(
        pl.col("label").replace_strict(leaf_of, default=None, return_dtype=pl.String).alias("tree_leaf")
    ).drop("label")
    return row_leaves, vocab


def spherical_kmeans(vectors: np.ndarray, k: int, weights: np.ndarray, seed: int, iterations: int) -> np.ndarray:
    """Cluster ids 0..m-1 (m <= k, empty clusters dropped, ids in order of first appearance)."""
    import faiss

    if k >= len(vectors):
        return np.arange(len(vectors))
    if k <= 1:
        return np.zeros(len(vectors), dtype=np.int64)
    km = faiss.Kmeans(vectors.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False, min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(np.ascontiguousarray(vectors, dtype=np.float32), weights=np.ascontiguousarray(weights, dtype=np.float32))
    _, assign = km.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
    _, relabeled = np.unique(assign[:, 0], return_inverse=True)
    first_seen = {}
    for c in relabeled:
        first_seen.setdefault(int(c), len(first_seen))
    return np.array([first_seen[int(c)] for c in relabeled], dtype=np.int64)


def _normalize(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def build_tree(
    labels: list[str],
    vectors: np.ndarray,
    rows: np.ndarray,
    settings: TreeSettings,
    namer: Callable[[list[list[str]]], list[str | None]] | None = None,
    refine: tuple[Ask, Callable[[list[str]], np.ndarray]] | None = None,
) -> pl.DataFrame:
    """Nodes of the tree over leaves `labels` (with unit `vectors` and row counts `rows`).

    Columns: node_id (root = 0), parent_id, depth (root 0, leaves deepest), level (leaves 0),
    label, is_leaf, n_leaves, leaf_rows (rows summed over leaves; a row with several leaves counts
    for each), member_tags (the leaf labels below), embedding.
    """
    n = len(labels)
    levels_parent: list[np.ndarray] = []  # parent index (into the next level) of each node, per level
    level_vecs = [_normalize(np.asarray(vectors, dtype=np.float32))] if n else []
    level_rows = [np.asarray(rows, dtype=np.float64)] if n else []
    level_names: list[list[str]] = [list(labels)]
    while n and len(level_vecs[-1]) > settings.top and len(level_vecs) < settings.max_depth:
        cur_vecs, cur_rows = level_vecs[-1], level_rows[-1]
        seed = settings.seed + len(level_vecs)
        if refine is not None:
            assign, names = clio_level(level_names[-1], cur_vecs, cur_rows, settings, refine[0], refine[1], seed)
        else:
            k = math.ceil(len(cur_vecs) / settings.branching)
            assign = spherical_kmeans(cur_vecs, k, np.maximum(cur_rows, 1.0), seed, settings.kmeans_iterations)
            names = []
        m = int(assign.max()) + 1
        if m >= len(cur_vecs):
            break
        sums = np.zeros((m, cur_vecs.shape[1]), dtype=np.float64)
        np.add.at(sums, assign, cur_vecs * np.maximum(cur_rows, 1.0)[:, None])
        levels_parent.append(assign)
        level_names.append(names)
        level_vecs.append(_normalize(sums.astype(np.float32)))
        level_rows.append(np.bincount(assign, weights=cur_rows, minlength=m))

    # Number nodes top-down: root 0, then each level from the top, so ids read like a preorder by level.
    n_levels = len(level_vecs)
    offsets, next_id = {}, 1
    for lvl in range(n_levels - 1, -1, -1):
        offsets[lvl] = next_id
        next_id += len(level_vecs[lvl])
    members: list[list[int]] = [list(range(n))] if n else [[]]
    level_members = [[[i] for i in range(n)]]
    for assign in levels_parent:
        grouped: list[list[int]] = [[] for _ in range(int(assign.max()) + 1)]
        for child, parent in enumerate(assign):
            grouped[parent].extend(level_members[-1][child])
        level_members.append(grouped)

    node_id, parent_id, depth, level, label, is_leaf, n_leaves, leaf_rows, member_tags, embedding = ([] for _ in range(10))
    rows_arr = np.asarray(rows, dtype=np.float64)
    order_labels = lambda leaf_ids: [labels[i] for i in sorted(leaf_ids, key=lambda i: (-rows_arr[i], labels[i]))]
    dim = level_vecs[0].shape[1] if n else 0
    node_id.append(ROOT), parent_id.append(None), depth.append(0), level.append(n_levels), label.append("ROOT"), is_leaf.append(False)
    n_leaves.append(n), leaf_rows.append(float(rows_arr.sum())), member_tags.append(order_labels(members[0]))
    embedding.append(_normalize(level_vecs[-1].sum(axis=0, keepdims=True))[0] if n else np.zeros(dim, dtype=np.float32))
    for lvl in range(n_levels - 1, -1, -1):
        for i, vec in enumerate(level_vecs[lvl]):
            node_id.append(offsets[lvl] + i)
            parent_id.append(ROOT if lvl == n_levels - 1 else offsets[lvl + 1] + int(levels_parent[lvl][i]))
            depth.append(n_levels - lvl)
            level.append(lvl)
            leaf_ids = level_members[lvl][i]
            tags = order_labels(leaf_ids)
            if lvl == 0 or refine is not None:
                label.append(level_names[lvl][i])
            else:
                label.append(" / ".join(tags[:2]) + (" …" if len(tags) > 2 else ""))
            is_leaf.append(lvl == 0)
            n_leaves.append(len(leaf_ids))
            leaf_rows.append(float(level_rows[lvl][i]))
            member_tags.append(tags)
            embedding.append(vec)
    nodes = pl.DataFrame(
        {
            "node_id": node_id, "parent_id": parent_id, "depth": depth, "level": level, "label": label, "is_leaf": is_leaf,
            "n_leaves": n_leaves, "leaf_rows": leaf_rows, "member_tags": member_tags,
            "embedding": pl.Series(np.stack(embedding).astype(np.float32), dtype=pl.Array(pl.Float32, max(dim, 1))) if dim else [[0.0]] * len(node_id),
        },
        schema_overrides={"parent_id": pl.Int64, "depth": pl.Int32, "level": pl.Int32},
    )
    nodes = collapse_single_children(nodes)
    if namer is not None and refine is None:
        nodes = name_internal_nodes(nodes, namer)
    return nodes


def collapse_single_children(nodes: pl.DataFrame) -> pl.DataFrame:
    """Remove internal nodes (not the root) with exactly one child: the child takes their place.

    K-means leaves such chains when a cluster holds one node, and each link repeats its child's
    label. Node ids are renumbered 0..n-1 in the old order (root 0) and depths recomputed, so
    leaves may sit at different depths; `level` (height of the level that made a node) is kept.
    """
    parent = dict(zip(nodes["node_id"].to_list(), nodes["parent_id"].to_list()))
    n_children: dict[int, int] = {}
    for p in parent.values():
        if p is not None:
            n_children[p] = n_children.get(p, 0) + 1
    removed = {node for node, p in parent.items() if p is not None and n_children.get(node, 0) == 1}
    if not removed:
        return nodes

    def kept_parent(node: int) -> int | None:
        p = parent[node]
        while p in removed:
            p = parent[p]
        return p

    kept = nodes.filter(~pl.col("node_id").is_in(list(removed)))
    new_id = {old: new for new, old in enumerate(kept["node_id"].to_list())}
    new_parent = [None if p is None else new_id[kept_parent(n)] for n, p in zip(kept["node_id"], kept["parent_id"])]
    depth: dict[int, int] = {}
    for node, p in zip(range(kept.height), new_parent):  # parents come before children in node order
        depth[node] = 0 if p is None else depth[p] + 1
    return kept.with_columns(
        pl.Series("node_id", range(kept.height), dtype=pl.Int64),
        pl.Series("parent_id", new_parent, dtype=pl.Int64),
        pl.Series("depth", [depth[i] for i in range(kept.height)], dtype=pl.Int32),
    )


def tree_quality(nodes: pl.DataFrame, memberships: pl.DataFrame, pool_rows: int) -> dict[str, float]:
    """How well the tree organizes the pool: rows per leaf (median, share of single-row leaves),
    depth, branching, share of pool rows grounded on a leaf, and label repetition along paths
    (nodes labelled exactly like their parent)."""
    leaves = nodes.filter(pl.col("is_leaf"))
    per_leaf = leaves.select("node_id").join(memberships.group_by("node_id").agg(pl.col("row_id").n_unique().alias("rows")), on="node_id", how="left")["rows"].fill_null(0)
    internal = nodes.filter(~pl.col("is_leaf") & (pl.col("node_id") != ROOT))
    children = nodes.drop_nulls("parent_id").group_by("parent_id").len()["len"]
    label = dict(zip(nodes["node_id"], nodes["label"]))
    repeats = sum(1 for n, p in zip(nodes["node_id"], nodes["parent_id"]) if p is not None and p != ROOT and label[p] == label[n])
    return {
        "leaves": leaves.height,
        "internal_nodes": internal.height,
        "rows_per_leaf_median": float(per_leaf.median() or 0),
        "rows_per_leaf_mean": float(per_leaf.mean() or 0),
        "single_row_leaf_share": float((per_leaf == 1).mean() or 0) if len(per_leaf) else 0.0,
        "depth_max": int(nodes["depth"].max() or 0),
        "leaf_depth_mean": float(leaves["depth"].mean() or 0),
        "branching_mean": float(children.mean() or 0),
        "branching_max": int(children.max() or 0),
        "rows_grounded_share": memberships["row_id"].n_unique() / pool_rows if pool_rows else 0.0,
        "label_repeats_on_paths": repeats,
    }


def name_internal_nodes(nodes: pl.DataFrame, namer: Callable[[list[list[str]]], list[str | None]]) -> pl.DataFrame:
    """Replace the labels of internal nodes (not the root) with names from `namer`, given each
    node's children labels (at most 10, most rows first); a None keeps the embedding-based label."""
    # Name from the bottom up so that parents see their children's new names.
    labels = dict(zip(nodes["node_id"], nodes["label"]))
    levels = sorted(set(nodes.filter(~pl.col("is_leaf") & (pl.col("node_id") != ROOT))["level"].to_list()))
    child_ids = (
        nodes.filter(pl.col("parent_id").is_not_null()).sort(["parent_id", "leaf_rows"], descending=[False, True])
        .group_by("parent_id", maintain_order=True).agg(pl.col("node_id").head(10))
    )
    kids = dict(zip(child_ids["parent_id"], child_ids["node_id"]))
    for lvl in levels:
        ids = nodes.filter((pl.col("level") == lvl) & ~pl.col("is_leaf") & (pl.col("node_id") != ROOT))["node_id"].to_list()
        names = namer([[labels[c] for c in kids.get(i, [])] for i in ids])
        for i, name in zip(ids, names):
            if name:
                labels[i] = name
    return nodes.with_columns(pl.col("node_id").replace_strict(labels, return_dtype=pl.String).alias("label"))


def ground_rows(row_tags: pl.DataFrame, nodes: pl.DataFrame, column: str = "tree_tags") -> pl.DataFrame:
    """Row-to-leaf memberships: (row_id, node_id, weight = 1 / number of the row's leaves)."""
    leaves = nodes.filter(pl.col("is_leaf")).select(pl.col("label").alias("tag"), "node_id")
    pairs = row_tags.select("row_id", pl.col(column).alias("tag")).explode("tag").drop_nulls("tag").join(leaves, on="tag")
    return pairs.select("row_id", "node_id").unique().with_columns((1.0 / pl.len().over("row_id")).alias("weight")).sort("row_id", "node_id")


def ground_vectors(vectors: np.ndarray, nodes: pl.DataFrame, tau: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Nearest leaf for each vector (node ids and cosines); below `tau`, the nearest internal node."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    leaves = nodes.filter(pl.col("is_leaf"))
    internal = nodes.filter(~pl.col("is_leaf") & (pl.col("node_id") != ROOT))
    out_ids = np.full(len(vectors), -1, dtype=np.int64)
    out_sims = np.full(len(vectors), -1.0, dtype=np.float32)
    if len(vectors) == 0 or leaves.is_empty():
        return out_ids, out_sims
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(leaves["embedding"].to_numpy(), dtype=np.float32))
    sims, idx = index.search(vectors, 1)
    out_ids[:] = leaves["node_id"].to_numpy()[idx[:, 0]]
    out_sims[:] = sims[:, 0]
    low = out_sims < tau
    if low.any() and not internal.is_empty():
        inner = faiss.IndexFlatIP(vectors.shape[1])
        inner.add(np.ascontiguousarray(internal["embedding"].to_numpy(), dtype=np.float32))
        s2, i2 = inner.search(vectors[low], 1)
        out_ids[low] = internal["node_id"].to_numpy()[i2[:, 0]]
        out_sims[low] = s2[:, 0]
    return out_ids, out_sims


def ancestors(nodes: pl.DataFrame) -> dict[int, list[int]]:
    """node_id -> path from the top (excluding the root) down to the node itself."""
    parent = dict(zip(nodes["node_id"].to_list(), nodes["parent_id"].to_list()))
    paths: dict[int, list[int]] = {}
    for node in parent:
        path, cur = [], node
        while cur is not None and cur != ROOT:
            path.append(cur)
            cur = parent[cur]
        paths[node] = path[::-1]
    return paths
