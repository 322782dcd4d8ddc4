"""TAGS sampling: greedy maximization of tree information with optional leaf-level KL alignment
(research/tags-tacos.md §2.4-2.7, all PROPOSALs: the TAGS code is not public).

Each row x has leaves Lf(x) with weights 1/|Lf(x)| and a quality q(x) >= 0. Its mass on a node v
(root excluded) is a(x, v) = sum over its leaves below v of weight * gamma^(depth(leaf) - depth(v)).
A subset S puts M_v(S) = sum_x q(x) a(x, v) on node v, and its tree information is
TI(S) = sum_v w_depth(v) * phi(M_v), phi(z) = (z + 1e-6)^0.8 (MIG's concave form). TI is monotone
submodular, so plain TI maximization uses lazy greedy (CELF): exact gains, ties to the lower row.

With a target leaf distribution p_T (smoothed with epsilon and optionally backed off to siblings),
each step maximizes  dTI(x)/max dTI + lambda * dKL(x)/max |dKL|,  where
dKL(x) = KL(p_T || p_S) - KL(p_T || p_S+x) and p_S(l) = (c_l + eps) / (C + eps |L|), c_l summing the
leaf weights of selected rows. The KL term is not submodular, so this runs plain greedy, keeping
every candidate's dTI and dKL exact by updating only the candidates that share a changed node.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

PHI_A, PHI_B = 1e-6, 0.8


def phi(z):
    return np.power(z + PHI_A, PHI_B)


@dataclass
class TagsResult:
    order: list[int]  # picked row indices, in pick order
    gain: np.ndarray  # information gain when picked (NaN if not picked)
    kl_gain: np.ndarray  # KL improvement when picked (NaN if not picked or no target)
    final_gain: np.ndarray  # each row's information gain given the final subset
    node_mass: np.ndarray  # M_v of the final subset


@dataclass
class TreeIndex:
    """The tree as arrays: node depth, and each leaf's path of (node, discount) from the top."""

    depth: np.ndarray
    paths: dict[int, list[int]]
    n_nodes: int
    level_weight: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_nodes(cls, node_ids, parent_ids, depths, level_weight: dict[int, float] | None = None) -> TreeIndex:
        n = int(max(node_ids)) + 1 if len(node_ids) else 1
        depth = np.zeros(n, dtype=np.int64)
        parent = {}
        for node, par, d in zip(node_ids, parent_ids, depths):
            depth[node] = d
            parent[node] = par
        paths = {}
        for node in node_ids:
            path, cur = [], node
            while cur is not None and parent.get(cur) is not None:  # the root has no parent and is excluded
                path.append(cur)
                cur = parent[cur]
            paths[node] = path[::-1]
        return cls(depth, paths, n, level_weight or {})

    def weights(self) -> np.ndarray:
        return np.array([self.level_weight.get(int(d), 1.0) for d in self.depth])


def tree_metrics(mass: np.ndarray, tree: TreeIndex, node_ids) -> dict[str, float]:
    """tags-tacos.md §2.5's analysis numbers for a subset with node masses M_v: TI(S) =
    sum_v w_v phi(M_v) over non-root nodes, and per level d the normalized entropy
    H_d = -sum p_v log p_v / log |level d| with p_v proportional to M_v."""
    ids = np.asarray([n for n in node_ids if tree.depth[n] > 0], dtype=np.int64)
    out = {"tree_information": float((tree.weights()[ids] * phi(mass[ids])).sum())}
    for d in np.unique(tree.depth[ids]):
        level = ids[tree.depth[ids] == d]
        m = mass[level]
        if len(level) < 2 or m.sum() <= 0:
            continue
        p = m[m > 0] / m.sum()
        out[f"entropy_depth_{int(d)}"] = float(-(p * np.log(p)).sum() / np.log(len(level)))
    return out


def node_mass_matrix(rows: np.ndarray, leaves: np.ndarray, weights: np.ndarray, quality: np.ndarray, tree: TreeIndex, n_rows: int, gamma: float = 1.0) -> sp.csr_matrix:
    """A[x, v] = q(x) * a(x, v) for every row x and node v (root excluded), from memberships
    (row, leaf, weight) exploded along each leaf's path, vectorized."""
    lengths = np.array([len(tree.paths.get(v, [])) for v in range(tree.n_nodes)], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter((v for n in range(tree.n_nodes) for v in tree.paths.get(n, [])), dtype=np.int64, count=int(lengths.sum()))
    leaves = np.asarray(leaves, dtype=np.int64)
    rep = lengths[leaves]
    offsets = np.arange(int(rep.sum())) - np.repeat(np.cumsum(rep) - rep, rep)
    nodes = flat[np.repeat(start[leaves], rep) + offsets]
    values = np.repeat(np.asarray(weights, dtype=np.float64) * np.asarray(quality, dtype=np.float64)[rows], rep)
    values = values * np.power(gamma, np.repeat(tree.depth[leaves], rep) - tree.depth[nodes])
    return sp.csr_matrix((values, (np.repeat(np.asarray(rows, dtype=np.int64), rep), nodes)), shape=(n_rows, tree.n_nodes))


def _gain(row: int, a: sp.csr_matrix, mass: np.ndarray, w: np.ndarray) -> float:
    lo, hi = a.indptr[row], a.indptr[row + 1]
    nodes, vals = a.indices[lo:hi], a.data[lo:hi]
    return float(np.sum(w[nodes] * (phi(mass[nodes] + vals) - phi(mass[nodes]))))


def all_gains(a: sp.csr_matrix, mass: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Every row's exact gain given node masses, vectorized over the sparse entries."""
    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    parts = w[a.indices] * (phi(mass[a.indices] + a.data) - phi(mass[a.indices]))
    return np.bincount(rows, weights=parts, minlength=a.shape[0])


def _key(g: float) -> float:
    """Heap key of a gain: rounded, so that equal gains summed in a different order tie exactly
    and the lower row wins, as in plain greedy."""
    return -round(float(g), 10)


def lazy_greedy(a: sp.csr_matrix, budget: int, w: np.ndarray) -> TagsResult:
    """CELF on TI: exact gains, with upper bounds from earlier steps (valid by submodularity).

    Stale bounds are refreshed in vectorized batches: when many rows share the top of the tree,
    one pick lowers many bounds at once and one-at-a-time CELF would re-evaluate each in turn. A
    row is taken only when its gain is current and it leads the heap, so the picks are plain
    greedy's (ties to the lower row).
    """
    n = a.shape[0]
    mass = np.zeros(a.shape[1])
    heap = [(_key(g), x, 0) for x, g in enumerate(all_gains(a, mass, w))]
    heapq.heapify(heap)
    gain = np.full(n, np.nan)
    order: list[int] = []
    step, batch = 0, 16
    while heap and len(order) < budget:
        if heap[0][2] == step:  # the leader's gain is current: it is the best
            _, x, _ = heapq.heappop(heap)
            lo, hi = a.indptr[x], a.indptr[x + 1]
            gain[x] = _gain(x, a, mass, w)
            order.append(x)
            mass[a.indices[lo:hi]] += a.data[lo:hi]
            step += 1
            continue
        stale = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
        rows = np.fromiter((x for _, x, _ in stale), dtype=np.int64, count=len(stale))
        for g, x in zip(all_gains(a[rows], mass, w), rows):
            heapq.heappush(heap, (_key(g), int(x), step))
        batch = min(batch * 2, 4096) if heap[0][2] != step else max(batch // 2, 16)
    return TagsResult(order, gain, np.full(n, np.nan), all_gains(a, mass, w), mass)


def linear_greedy(a: sp.csr_matrix, budget: int, w: np.ndarray) -> TagsResult:
    """MIG's sampler (mig/sampler.py) lifted to the tree, for parity runs (tags-tacos.md §2.6,
    gain="mig_linear"): each step scores every unpicked row by the first-order gain
    a(x) . (w * phi'(M)) and takes the first maximum. O(budget x nonzeros), one sparse mat-vec a step."""
    n = a.shape[0]
    mass = np.zeros(a.shape[1])
    picked = np.zeros(n, dtype=bool)
    gain = np.full(n, np.nan)
    order: list[int] = []
    for _ in range(min(budget, n)):
        scores = a @ (w * PHI_B * np.power(mass + PHI_A, PHI_B - 1))
        scores[picked] = -np.inf
        x = int(np.argmax(scores))
        gain[x] = scores[x]
        picked[x] = True
        order.append(x)
        lo, hi = a.indptr[x], a.indptr[x + 1]
        mass[a.indices[lo:hi]] += a.data[lo:hi]
    return TagsResult(order, gain, np.full(n, np.nan), all_gains(a, mass, w), mass)


def kl_greedy(
    a: sp.csr_matrix,
    leaf_weights: sp.csr_matrix,
    target: np.ndarray,
    budget: int,
    w: np.ndarray,
    *,
    lam: float = 1.0,
    eps: float = 1e-3,
) -> TagsResult:
    """Plain greedy on normalized dTI + lambda * normalized dKL, gains kept exact incrementally.

    `leaf_weights[x, l]` = 1/|Lf(x)| over leaf columns l; `target` = p_T over those columns.
    """
    n = a.shape[0]
    n_leaves = leaf_weights.shape[1]
    mass = np.zeros(a.shape[1])
    a_csc = a.tocsc()
    lw_csr, lw_csc = leaf_weights.tocsr(), leaf_weights.tocsc()
    gain = all_gains(a, mass, w)
    counts = np.zeros(n_leaves)
    total = 0.0
    # Leaf term of dKL: sum_l p_T(l) log((c_l + d + eps) / (c_l + eps)); the mass term is shared.
    lw_coo = leaf_weights.tocoo()
    leaf_term = np.zeros(n)
    np.add.at(leaf_term, lw_coo.row, target[lw_coo.col] * np.log((lw_coo.data + eps) / eps))
    has_leaves = np.asarray(leaf_weights.sum(axis=1)).ravel()
    available = np.ones(n, dtype=bool)
    picked_gain, picked_kl = np.full(n, np.nan), np.full(n, np.nan)
    order: list[int] = []
    for _ in range(min(budget, n)):
        mass_term = np.log((total + 1 + eps * n_leaves) / (total + eps * n_leaves))
        kl = leaf_term - has_leaves * mass_term
        ti_scale = np.max(gain[available]) if available.any() else 0.0
        kl_scale = np.max(np.abs(kl[available])) if available.any() else 0.0
        score = (gain / ti_scale if ti_scale > 0 else 0.0) + lam * (kl / kl_scale if kl_scale > 0 else 0.0)
        score = np.where(available, score, -np.inf)
        # The first row within rounding of the best: incremental updates must not break exact ties.
        best = score.max()
        x = int(np.flatnonzero(score >= best - 1e-10 * max(1.0, abs(best)))[0])
        order.append(x)
        available[x] = False
        picked_gain[x], picked_kl[x] = gain[x], kl[x]
        # Tree information: update the candidates under each node the pick adds mass to.
        lo, hi = a.indptr[x], a.indptr[x + 1]
        for node, add in zip(a.indices[lo:hi], a.data[lo:hi]):
            old, new = mass[node], mass[node] + add
            clo, chi = a_csc.indptr[node], a_csc.indptr[node + 1]
            ys, vals = a_csc.indices[clo:chi], a_csc.data[clo:chi]
            gain[ys] += w[node] * ((phi(new + vals) - phi(new)) - (phi(old + vals) - phi(old)))
            mass[node] = new
        # KL: update the candidates sharing each leaf whose count changed.
        lo, hi = lw_csr.indptr[x], lw_csr.indptr[x + 1]
        for leaf, d in zip(lw_csr.indices[lo:hi], lw_csr.data[lo:hi]):
            old, new = counts[leaf], counts[leaf] + d
            clo, chi = lw_csc.indptr[leaf], lw_csc.indptr[leaf + 1]
            ys, ds = lw_csc.indices[clo:chi], lw_csc.data[clo:chi]
            leaf_term[ys] += target[leaf] * (np.log((new + ds + eps) / (new + eps)) - np.log((old + ds + eps) / (old + eps)))
            counts[leaf] = new
        total += has_leaves[x]
    return TagsResult(order, picked_gain, picked_kl, all_gains(a, mass, w), mass)


def target_distribution(counts: np.ndarray, parents: np.ndarray | None = None, *, eps: float = 1e-3, mu: float = 0.0, total: float | None = None) -> np.ndarray:
    """p_T over leaves from (fractional) target counts divided by `total` (|D_T|, prompts without a
    grounded tag included; default: the counts' sum), with add-eps smoothing and, with `mu` > 0, a
    back-off that gives each leaf mu x its parent's mass shared among the parent's leaves."""
    total = counts.sum() if total is None else total
    p = counts / total if total > 0 else np.full(len(counts), 1.0 / len(counts))
    if mu > 0 and parents is not None:
        parent_mass: dict[int, float] = {}
        siblings: dict[int, int] = {}
        for leaf, parent in enumerate(parents):
            parent_mass[parent] = parent_mass.get(parent, 0.0) + p[leaf]
            siblings[parent] = siblings.get(parent, 0) + 1
        backed = np.array([parent_mass[par] / siblings[par] for par in parents])
        p = (1 - mu) * p + mu * backed
    p = p + eps
    return p / p.sum()
