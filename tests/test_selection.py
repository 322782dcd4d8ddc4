"""methods/selection.py: the selection rules with known answers, and the reference oracles (numbers computed from the
reference code; see tests/fixtures/reference/selection/README.md)."""

import json
from pathlib import Path

import numpy as np
import pytest

from curation_assets.methods import selection as rules

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


def test_budget_top_k_random():
    assert rules.resolve_budget(0.05, 1000) == 50 and rules.resolve_budget(30, 1000) == 30 and rules.resolve_budget(5000, 100) == 100
    values = np.array([0.5, np.nan, 0.9, 0.9, 0.1])
    assert rules.top_k(values, 2) == [2, 3] and rules.top_k(values, 2, descending=False) == [4, 0]
    assert rules.random_subset(10, 3, seed=1) == rules.random_subset(10, 3, seed=1) != rules.random_subset(10, 3, seed=2)



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
