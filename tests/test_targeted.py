"""methods/targeted.py: a TIS algorithm's picks turned into per-row reasons (pool positions, queries, tasks)."""

import numpy as np

from curation_assets.methods.similarity_search import DenseSimilarity
from curation_assets.methods.targeted import SETTINGS, TargetedInputs, TargetedSettings, run

HAND = np.array([[0.12, 0.85, 0.33, 0.85, -0.40, 0.61, 0.05, 0.70],
                 [0.90, 0.10, 0.72, 0.15, 0.66, 0.20, 0.05, 0.70],
                 [0.30, 0.55, 0.95, 0.10, 0.50, 0.60, 0.88, 0.20]])


def test_round_robin_reasons_map_back_to_pool_positions():
    # pool of 10 rows; rows 0 and 5 have no representation, the other 8 are HAND's columns
    eligible = np.array([1, 2, 3, 4, 6, 7, 8, 9])
    inputs = TargetedInputs(DenseSimilarity(HAND), eligible, np.array([10, 11, 12]), ["bbh", "gsm8k", "gsm8k"], "less (test)",
                            missing={0: "no assistant token", 5: "no assistant token"})
    pick = run("round_robin", inputs, 4, TargetedSettings(), 10)
    assert pick.order == eligible[[1, 0, 2, 3]].tolist()  # RR on HAND: [1, 0, 2, 3]
    assert pick.columns["target_query"][eligible[1]] == 10 and pick.columns["target_task"][eligible[0]] == "gsm8k"
    assert pick.columns["target_round"][eligible[3]] == 2 and pick.columns["target_round"][eligible[1]] == 1
    assert "round 1: claimed by query 10 (bbh), similarity 0.8500" in pick.reason[eligible[1]]
    assert pick.reason[0].startswith("no less representation") and pick.ineligible == {0, 5}
    dropped = pick.reason[eligible[4]]  # HAND column 4: nearest query 11 at 0.66
    assert "nearest query 11 (gsm8k) at similarity 0.6600" in dropped
    assert np.isnan(pick.nearest_similarity[0]) and pick.nearest_similarity[eligible[6]] == 0.88


def test_every_algorithm_returns_distinct_eligible_rows():
    rng = np.random.default_rng(0)
    s = np.clip(rng.normal(0.3, 0.3, (4, 40)), -1, 1)
    inputs = TargetedInputs(DenseSimilarity(s), np.arange(40), np.arange(4), ["a", "a", "b", "b"], "embed (test)",
                            kde_features=lambda rows, k: np.sort(rng.uniform(0.5, 1, (len(rows), k)), axis=1)[:, ::-1])
    for algorithm in ("round_robin", "doubly_greedy", "uot", "knn_uniform", "knn_kde"):
        settings = SETTINGS[algorithm](**({"uot_candidates_per_query": None} if algorithm == "uot" else {}))
        pick = run(algorithm, inputs, 10, settings, 40)
        assert len(pick.order) == len(set(pick.order)) == 10
        assert all(pick.claimed_task[p] in ("a", "b") for p in pick.order)
