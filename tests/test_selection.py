"""Selection rules with known answers, and the reference oracles (numbers computed from the
reference code; see tests/fixtures/reference/selection/README.md)."""

import itertools
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from curation_assets.methods import selection as rules
from curation_assets.methods.tags_sampler import TreeIndex, kl_greedy, lazy_greedy, node_mass_matrix, phi, target_distribution

SELECTION = Path(__file__).parent / "fixtures" / "reference" / "selection"


def cases(name):
    return json.loads((SELECTION / name).read_text())["cases"]


def nan(v):
    return np.nan if v is None else v


@pytest.mark.parametrize("case", cases("superfiltering_select.json"), ids=lambda c: c["name"])
def test_superfiltering_matches_select_data(case):
    i = case["inputs"]
    ifd = np.array([nan(v) for v in i["ifd_ppl"]], dtype=float)
    for variant, budget in (("hardcoded_52002", int(52002 * i["sample_rate"])), ("pool_relative_variant", int(len(ifd) * i["sample_rate"]))):
        assert rules.superfiltering(ifd, budget, i["filter_threash"]) == case["outputs"][variant]["selected"]


def test_superfiltering_reference_pool_size_reproduces_the_hardcoded_count():
    from curation_assets.methods.plugin import Budget, Candidates
    from curation_assets.methods.superfiltering import SuperfilteringSettings, pick

    # select_data.py: sample_num = int(52002 * sample_rate) whatever the file holds; then IFD < 1,
    # sorted descending (stable), the first sample_num.
    ifd = [0.5, 1.2, 0.9, float("nan"), 0.7, 0.9, 0.2, 0.95, 0.3, 0.6]
    rate = 0.0001  # int(52002 * 0.0001) = 5 rows, where a rate of these 10 rows would be 0
    reference = sorted([i for i, v in enumerate(ifd) if v < 1], key=lambda i: ifd[i], reverse=True)[: int(52002 * rate)]
    assert reference == [7, 2, 5, 4, 9]
    c = Candidates(pl.DataFrame({"row_id": [str(i) for i in range(10)], "ifd_ppl": ifd}))
    by_rate = Budget(rules.resolve_budget(rate, c.n), rate, c.n)
    picked = pick(c, by_rate, SuperfilteringSettings(reference_pool_size=52002))
    assert picked.order == reference and picked.budget == 5 and "52,002" in picked.budget_rule
    assert pick(c, by_rate, SuperfilteringSettings()).order == []
    # A count budget is a count either way.
    assert pick(c, Budget(3, 3, c.n), SuperfilteringSettings(reference_pool_size=52002)).order == [7, 2, 5]


@pytest.mark.parametrize("case", cases("cherry_select.json"), ids=lambda c: c["name"])
def test_cherry_matches_data_by_ifd(case):
    i = case["inputs"]
    n = max(i["index"]) + 1
    rate, kept = np.full(n, np.nan), np.zeros(n, dtype=bool)
    for r, ix in zip(i["mean_rate"], i["index"]):
        rate[ix], kept[ix] = nan(r), True
    selected, n_taken = rules.cherry(rate, kept, i["sample_rate"], i["sample_number"])
    if case["name"] == "n_zero_returns_all":
        assert selected == [] and n_taken == 0  # the reference's [-0:] returns every row: we return none
    elif case["name"] == "nan_rates":
        # n counts the NaN rows as the reference does (they pass its `> 1` test), but a NaN is never picked.
        assert n_taken == len(selected) == case["outputs"]["effective_sample_number"]
        assert not any(np.isnan(rate[s]) for s in selected)
        assert {s for s in case["outputs"]["selected"] if not np.isnan(rate[s])} <= set(selected)
    else:
        assert selected == case["outputs"]["selected"]


@pytest.mark.parametrize("case", cases("deita_filter.json"), ids=lambda c: c["name"])
def test_deita_filter_matches_the_reference(case):
    i = case["inputs"]
    scores = rules.deita_score([[[nan(v) for v in turns] for turns in i["scores"][k]] for k in i["sort_key"]])
    emb = np.array(i["embeddings"], dtype=np.float32)
    ref_order = case["diagnostics"]["reference_sorted_idx"]
    ours = rules.deita_filter(emb, scores, i["threshold"], i["data_size"], i["batch_size"], order=ref_order, allow_zero_norm=True)
    assert ours.selected == case["outputs"]["selected_idx"]
    # Our default order is a stable (-score, index) sort with NaN last.
    stable = rules.deita_filter(emb, scores, i["threshold"], i["data_size"], i["batch_size"], allow_zero_norm=True)
    assert stable.selected == case["diagnostics"]["selected_idx_with_stable_sort_variant"]
    if (np.linalg.norm(emb, axis=1) == 0).any():
        with pytest.raises(ValueError, match="zero-norm"):
            rules.deita_filter(emb, scores, i["threshold"], i["data_size"], i["batch_size"])


def test_deita_rejects_against_selected_rows_not_the_whole_pool():
    # a ~ b (cos 0.99), b ~ c, a not ~ c. DEITA compares with kept rows only: a kept, b rejected
    # (close to a), c kept (its only close row, b, was rejected). distilabel's nearest-neighbour
    # filter would drop b and c alike.
    emb = np.array([[1.0, 0.0], [0.99, 0.141], [0.96, 0.28]], dtype=np.float32)
    emb[2] = [np.cos(0.32), np.sin(0.32)]
    result = rules.deita_filter(emb, np.array([3.0, 2.0, 1.0]), threshold=0.99)
    assert result.selected == [0, 2] and result.rejected_by[1][0] == 0


def test_tacos_quotas_visit_small_clusters_first_and_fill():
    # (row, cluster, score): cluster 7 is small; row 1 is scored in two clusters.
    scores = [(0, 3, 90), (1, 3, 80), (2, 3, 70), (3, 3, 60), (1, 7, 95), (4, 7, 50), (5, 3, 101)]
    result = rules.tacos_select(scores, budget=4, per_cluster=1, fill=False)
    assert result.selected == [1, 0]  # cluster 7 first takes row 1; cluster 3 skips it and takes row 0
    assert 5 not in result.selected and "above 100" in result.reason[5]  # a score over 100 is never selected
    filled = rules.tacos_select(scores, budget=4, per_cluster=1, fill=True)
    assert filled.selected == [1, 0, 2, 3] and filled.picked_in[2] == -1
    assert rules.tacos_select(scores, budget=2, mode="global").selected == [0, 1]  # by mean: 90, 87.5


def test_tacos_ties_follow_judging_order_and_repeated_judgements_average():
    # Equal sizes: the cluster judged first goes first (sorted_1000.py's stable sort), so cluster 5 takes row 0.
    assert rules.tacos_select([(0, 5, 80), (1, 5, 70), (0, 2, 90), (2, 2, 85)], budget=2, per_cluster=1, fill=False).selected == [0, 2]
    # Row 12 was judged 90 and 10 (mean 50): it ties with rows 10 and 11 and the earliest judged of them wins.
    repeated = [(10, 0, 50), (11, 0, 50), (12, 0, 90), (12, 0, 10), (13, 0, 60), (13, 0, 60)]
    assert rules.tacos_select(repeated, budget=2, per_cluster=2, fill=False).selected == [13, 10]


def sorted_1000(judged: list[tuple[str, str, int]], per_cluster: int) -> list[str]:
    """TACOS's sorted_1000.py restated on (cluster key, item, score) lines in file order: a cluster's
    size is its whole judged list, scores over 100 included; clusters from the smallest (stable),
    up to `per_cluster` items each, skipping taken items and scores over 100."""
    result: dict[str, list[tuple[str, int]]] = {}
    for key, item, score in judged:
        result.setdefault(key, []).append((item, score))
    taken = []
    for key, values in sorted(result.items(), key=lambda kv: len(kv[1])):
        i = 0
        for item, score in sorted(values, key=lambda v: v[1], reverse=True):
            if i < per_cluster and item not in taken and score <= 100:
                taken.append(item)
                i += 1
    return taken


def test_tacos_scores_above_100_count_toward_cluster_size():
    # Cluster 1 has three judged rows, one of them over 100; cluster 2 has two. The reference visits
    # cluster 2 first (size 2 < 3); leaving the 150 out would make both size 2 and visit cluster 1 first.
    judged = [("1", "a", 90), ("1", "b", 150), ("1", "c", 40), ("2", "a", 95), ("2", "d", 30)]
    expected = sorted_1000(judged, per_cluster=1)
    assert expected == ["a", "c"]
    ids = {"a": 0, "b": 1, "c": 2, "d": 3}
    ours = rules.tacos_select([(ids[i], int(k), s) for k, i, s in judged], budget=10, per_cluster=1, fill=False)
    assert ours.selected == [ids[i] for i in expected]
    assert "above 100" in ours.reason[1]
    # The cluster of only over-100 scores still counts as one of K: budget // K is 6 // 3 = 2, not 6 // 2.
    only_high = [(0, 1, 90), (1, 1, 80), (2, 1, 70), (3, 2, 60), (4, 2, 50), (5, 2, 40), (6, 3, 120), (7, 3, 130)]
    assert rules.tacos_select(only_high, budget=6, fill=False).selected == [0, 1, 3, 4]


def test_tacos_strategy_reports_scores_above_100_as_never_selected():
    from curation_assets.methods.plugin import Budget, Candidates
    from curation_assets.methods.tacos import TacosSettings, pick

    comparisons = pl.DataFrame({
        "row_id": ["a", "b", "a", "c"], "cluster": [1, 1, 2, 2], "round": [0] * 4, "position": [1, 2, 1, 2],
        "partner": ["b", "a", "c", "a"], "score": [150.0, 60.0, 80.0, 120.0], "partner_score": [60.0, 150.0, 120.0, 80.0],
    })
    c = Candidates(pl.DataFrame({"row_id": ["a", "b", "c", "d"]}), comparisons=comparisons)
    picked = pick(c, Budget(4, 4, c.n), TacosSettings(per_cluster=2, fill_quota=False))
    assert sorted(picked.order) == [0, 1] and picked.gain[0] == 80.0  # a's 150 is not its value
    assert "above 100" in picked.reason[2] and 2 in picked.ineligible
    assert picked.reason[3].startswith("no comparative score")


def test_budget_top_k_random():
    assert rules.resolve_budget(0.05, 1000) == 50 and rules.resolve_budget(30, 1000) == 30 and rules.resolve_budget(5000, 100) == 100
    values = np.array([0.5, np.nan, 0.9, 0.9, 0.1])
    assert rules.top_k(values, 2) == [2, 3] and rules.top_k(values, 2, descending=False) == [4, 0]
    assert rules.random_subset(10, 3, seed=1) == rules.random_subset(10, 3, seed=1) != rules.random_subset(10, 3, seed=2)


# --------------------------------------------------------------------------- TAGS


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

    from curation_assets.methods.tags_sampler import linear_greedy

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


def test_target_leaf_mass_shares_each_prompt_over_its_grounded_nodes():
    from curation_assets.methods.plugin import Candidates
    from curation_assets.methods.tags import TagsSettings, target_leaf_mass

    # root 0 -> inner 1 (leaves 3, 4, 5) and leaf 2; a leaf list naming leaf 2 and node 1 is one prompt.
    nodes = pl.DataFrame({
        "node_id": [0, 1, 2, 3, 4, 5], "label": ["root", "inner", "x", "a", "b", "c"], "is_leaf": [False, False, True, True, True, True],
        "member_tags": [["x", "a", "b", "c"], ["a", "b", "c"], ["x"], ["a"], ["b"], ["c"]],
    })
    mass = target_leaf_mass(Candidates(pl.DataFrame({"row_id": []}), nodes=nodes, vocabulary=pl.DataFrame()), TagsSettings(target_leaves=["x", "inner"]))
    assert mass == pytest.approx({2: 0.5, 3: 1 / 6, 4: 1 / 6, 5: 1 / 6})


def test_instag_takes_the_most_tagged_rows_that_add_a_tag_pass_by_pass():
    tags = [["a"], ["a", "b", "c"], ["b", "c"], ["c", "d"], [], ["a", "b", "c"], ["e"]]
    # Pass 1 over rows by tag count (1, 5, 2, 3, 0, 6; row 4 has none): row 1 adds a b c, row 3 adds d,
    # row 6 adds e. Pass 2 starts afresh over 5, 2, 0: row 5 adds a b c. Pass 3: row 2 adds b c, row 0 adds a.
    picked, new = rules.instag(tags, 10)
    assert picked == [1, 3, 6, 5, 2, 0] and new == [3, 1, 1, 3, 2, 1]
    assert rules.instag(tags, 2) == ([1, 3], [3, 1])
    assert rules.instag([[], []], 5) == ([], [])
    measures = rules.instag_metrics(tags, [1, 3])
    assert measures == {"complexity": 2.5, "tag_coverage": 0.8}


def test_tree_metrics_information_and_level_entropy():
    from curation_assets.methods.tags_sampler import tree_metrics

    # root 0; level 1: nodes 1, 2; level 2: leaves 3, 4 under 1 and 5 under 2.
    tree = TreeIndex.from_nodes([0, 1, 2, 3, 4, 5], [None, 0, 0, 1, 1, 2], [0, 1, 1, 2, 2, 2])
    mass = np.array([9.0, 2.0, 2.0, 1.0, 1.0, 2.0])
    m = tree_metrics(mass, tree, range(6))
    assert m["tree_information"] == pytest.approx(float(phi(mass[1:]).sum()))
    assert m["entropy_depth_1"] == pytest.approx(1.0)  # two nodes, equal mass
    p = np.array([0.25, 0.25, 0.5])
    assert m["entropy_depth_2"] == pytest.approx(-(p * np.log(p)).sum() / np.log(3))


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_deita_blocks_keep_the_row_at_a_time_answer(block):
    rng = np.random.default_rng(block)
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    emb[:150] = emb[:150] * 0.2 + emb[0]  # a dense cluster: many rejections
    scores = rng.uniform(0, 10, 300)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    kept = []
    for i in np.argsort(-scores, kind="stable"):
        if not kept or (unit[kept] @ unit[i]).max() <= 0.9:
            kept.append(int(i))
    result = rules.deita_filter(emb, scores, 0.9, block=block)
    assert result.selected == kept and len(result.rejected_by) == 300 - len(kept)
    assert all(float(unit[p] @ unit[r]) > 0.9 - 1e-6 for r, (p, _) in result.rejected_by.items())
    assert rules.deita_filter(emb, scores, 0.9, data_size=20, block=block).selected == kept[:20]


def test_score_lists_keep_each_rows_scores_with_pool_percentiles():
    from curation_assets.methods.explain import score_lists

    values = {"a": np.array([0.5, np.nan, 2.0, 1.0]), "b": np.array([np.nan, np.nan, 3.0, 1.0])}
    assert score_lists(values, 4).to_list() == [
        [{"name": "a", "value": 0.5, "percentile": 100 / 3}],
        [],
        [{"name": "a", "value": 2.0, "percentile": 100.0}, {"name": "b", "value": 3.0, "percentile": 100.0}],
        [{"name": "a", "value": 1.0, "percentile": 200 / 3}, {"name": "b", "value": 1.0, "percentile": 50.0}],
    ]
    assert score_lists({}, 2).to_list() == [[], []]


def test_nearest_selected_is_the_most_similar_row_picked_before():
    from curation_assets.methods.explain import nearest_selected

    unit = lambda deg: [np.cos(np.radians(deg)), np.sin(np.radians(deg))]  # noqa: E731
    emb = np.array([unit(0), unit(10), unit(50), unit(95)], dtype=np.float32)
    nearest, sims = nearest_selected(emb, [2, 0])  # row 2 picked first, then row 0
    assert nearest.tolist() == [2, 0, -1, 2]  # row 0: only row 2 came before it; row 1 is nearest to row 0
    assert np.isnan(sims[2]) and sims[0] == pytest.approx(np.cos(np.radians(50)), abs=1e-6)
    assert sims[3] == pytest.approx(np.cos(np.radians(45)), abs=1e-6)
