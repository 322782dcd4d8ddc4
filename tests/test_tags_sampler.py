"""methods/tags_sampler.py: TAGS's node masses, the lazy greedy against a plain greedy, MIG's linear
gain, KL alignment, the target distribution and the tree metrics, on small trees."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from curation_assets.methods.tags_sampler import (
    TreeIndex, kl_greedy, lazy_greedy, linear_greedy, node_mass_matrix, phi, target_distribution, tree_metrics,
)


def test_node_mass_matrix_spreads_each_membership_up_its_path_discounted():
    # root 0 -> inner 1 (depth 1) -> leaves 2, 3 (depth 2). Row 0: leaves 2 and 3, weight 1/2 each,
    # quality 2; row 1: leaf 3, quality 1. gamma 0.5 halves a leaf's mass per level up; the root has none.
    tree = TreeIndex.from_nodes([0, 1, 2, 3], [None, 0, 1, 1], [0, 1, 2, 2])
    a = node_mass_matrix(np.array([0, 0, 1]), np.array([2, 3, 3]), np.array([0.5, 0.5, 1.0]), np.array([2.0, 1.0]), tree, 2, gamma=0.5)
    np.testing.assert_allclose(a.toarray(), [[0, 1.0, 1.0, 1.0], [0, 0.5, 0, 1.0]])
    assert tree.paths[3] == [1, 3] and tree.paths[0] == []


def random_tree(rng, n_rows=40):
    # root 0; top nodes 1-3; leaves 4-12 (three per top node)
    nodes = [0, 1, 2, 3] + list(range(4, 13))
    parents = [None, 0, 0, 0] + [1 + (leaf - 4) // 3 for leaf in range(4, 13)]
    depths = [0, 1, 1, 1] + [2] * 9
    tree = TreeIndex.from_nodes(nodes, parents, depths)
    rows, leaves, weights = [], [], []
    for r in range(n_rows):
        mine = rng.choice(np.arange(4, 13), size=rng.integers(1, 4), replace=False)
        for leaf in mine:
            rows.append(r)
            leaves.append(leaf)
            weights.append(1 / len(mine))
    return tree, np.array(rows), np.array(leaves), np.array(weights)


def brute_force_greedy(a, budget, w):
    chosen = []
    for _ in range(budget):
        mass = np.asarray(a[chosen].sum(axis=0)).ravel() if chosen else np.zeros(a.shape[1])
        gains = [(np.sum(w * (phi(mass + a[x].toarray().ravel()) - phi(mass))), -x) for x in range(a.shape[0]) if x not in chosen]
        chosen.append(-max(gains)[1])
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lazy_greedy_equals_plain_greedy(seed):
    rng = np.random.default_rng(seed)
    tree, rows, leaves, weights = random_tree(rng)
    quality = rng.uniform(0.2, 1.0, 40)
    a = node_mass_matrix(rows, leaves, weights, quality, tree, 40)
    result = lazy_greedy(a, 12, tree.weights())
    assert result.order == brute_force_greedy(a, 12, tree.weights())
    gains = result.gain[result.order]
    assert all(g1 >= g2 - 1e-12 for g1, g2 in itertools.pairwise(gains))  # submodular: non-increasing
    # Diversity: the first picks spread over the three top-level branches.
    tops = {1 + (leaf - 4) // 3 for r in result.order[:4] for leaf in leaves[rows == r]}
    assert tops == {1, 2, 3}


@pytest.mark.parametrize("seed", [0, 1])
def test_mig_linear_gain_is_migs_sampler_on_the_tree(seed):
    import torch

    rng = np.random.default_rng(seed)
    tree, rows, leaves, weights = random_tree(rng)
    a = node_mass_matrix(rows, leaves, weights, rng.uniform(0.2, 1.0, 40), tree, 40)
    # MIG's loop (mig/sampler.py) with the tree's node masses as its propagated label vectors.
    pool, mask, x_sel, migs = torch.tensor(a.toarray()), torch.ones(40, dtype=torch.bool), torch.zeros(a.shape[1], dtype=torch.float64), []
    for _ in range(12):
        candidate = pool[mask] @ (0.8 * (x_sel + 1e-6) ** (0.8 - 1))
        picked = int(torch.nonzero(mask).squeeze()[torch.argmax(candidate)])
        x_sel += pool[picked]
        mask[picked] = False
        migs.append(picked)
    assert linear_greedy(a, 12, np.ones(a.shape[1])).order == migs


def test_kl_alignment_pulls_the_subset_toward_the_target():
    rng = np.random.default_rng(5)
    tree, rows, leaves, weights = random_tree(rng, n_rows=60)
    a = node_mass_matrix(rows, leaves, weights, np.ones(60), tree, 60)
    lw = sp.csr_matrix((weights, (rows, leaves - 4)), shape=(60, 9))
    target = target_distribution(np.array([5.0, 5, 5, 0, 0, 0, 0, 0, 0]), eps=1e-3)  # branch 1 only
    plain = lazy_greedy(a, 15, tree.weights())
    aligned = kl_greedy(a, lw, target, 15, tree.weights(), lam=1.0)
    share = lambda order: lw[order].toarray()[:, :3].sum() / lw[order].toarray().sum()  # noqa: E731
    assert share(aligned.order) > share(plain.order) + 0.2
    assert np.isfinite(aligned.kl_gain[aligned.order]).all()
    # With lambda = 0 the KL term is off: the same picks as plain greedy.
    assert kl_greedy(a, lw, target, 15, tree.weights(), lam=0.0).order == plain.order


def test_target_distribution_smoothing_and_backoff():
    p = target_distribution(np.array([2.0, 0.0, 0.0, 0.0]), np.array([10, 10, 11, 11]), eps=1e-3, mu=0.2)
    assert abs(p.sum() - 1) < 1e-12 and p[1] > p[2] > 0  # the sibling of the target leaf gets mass
    # Divided by |D_T| = 4 prompts (two of them grounded nowhere): (0.5 + 1e-3) / (0.5 + 4e-3) before backing off.
    q = target_distribution(np.array([2.0, 0.0, 0.0, 0.0]), eps=1e-3, total=4)
    assert np.allclose(q, np.array([0.501, 0.001, 0.001, 0.001]) / 0.504)


def test_tree_metrics_information_and_level_entropy():
    # root 0; level 1: nodes 1, 2; level 2: leaves 3, 4 under 1 and 5 under 2.
    tree = TreeIndex.from_nodes([0, 1, 2, 3, 4, 5], [None, 0, 0, 1, 1, 2], [0, 1, 1, 2, 2, 2])
    mass = np.array([9.0, 2.0, 2.0, 1.0, 1.0, 2.0])
    m = tree_metrics(mass, tree, range(6))
    assert m["tree_information"] == pytest.approx(float(phi(mass[1:]).sum()))
    assert m["entropy_depth_1"] == pytest.approx(1.0)  # two nodes, equal mass
    p = np.array([0.25, 0.25, 0.5])
    assert m["entropy_depth_2"] == pytest.approx(-(p * np.log(p)).sum() / np.log(3))
