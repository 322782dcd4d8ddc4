"""methods/tacos.py: the `tacos` strategy over the judge's comparative scores (raw, as
sorted_1000.py, or Bradley-Terry strengths), and the strengths fitted on the implied wins."""

import numpy as np
import polars as pl
import pytest

from curation_assets.methods.comparative import bradley_terry
from curation_assets.methods.plugin import Budget, Candidates
from curation_assets.methods.tacos import TacosSettings, bradley_terry_strengths, pick


def three_calls():
    """Cluster 0, three judge calls: a 100 vs b 99, c 60 vs b 10, a 40 vs c 50 (two rows per call)."""
    calls = [(0, "a", "b", 100.0, 99.0), (1, "c", "b", 60.0, 10.0), (2, "a", "c", 40.0, 50.0)]
    rows = []
    for rnd, first, second, s1, s2 in calls:
        rows.append({"row_id": first, "cluster": 0, "round": rnd, "position": 1, "partner": second, "score": s1, "partner_score": s2})
        rows.append({"row_id": second, "cluster": 0, "round": rnd, "position": 2, "partner": first, "score": s2, "partner_score": s1})
    return pl.DataFrame(rows)


def test_tacos_strategy_reports_scores_above_100_as_never_selected():
    comparisons = pl.DataFrame({
        "row_id": ["a", "b", "a", "c"], "cluster": [1, 1, 2, 2], "round": [0] * 4, "position": [1, 2, 1, 2],
        "partner": ["b", "a", "c", "a"], "score": [150.0, 60.0, 80.0, 120.0], "partner_score": [60.0, 150.0, 120.0, 80.0],
    })
    c = Candidates(pl.DataFrame({"row_id": ["a", "b", "c", "d"]}), comparisons=comparisons)
    picked = pick(c, Budget(4, 4, c.n), TacosSettings(per_cluster=2, fill_quota=False))
    assert sorted(picked.order) == [0, 1] and picked.gain[0] == 80.0  # a's 150 is not its value
    assert "above 100" in picked.reason[2] and 2 in picked.ineligible
    assert picked.reason[3].startswith("no comparative score")


def test_bradley_terry_counts_each_call_once_and_odd_leftovers_too():
    # Cluster 0: a beat b (both rows kept); c is the odd leftover, judged beside a and kept alone.
    judged = pl.DataFrame(
        {"row_id": ["a", "b", "c"], "cluster": [0, 0, 0], "round": [0, 0, 0], "position": [1, 2, 1],
         "partner": ["b", "a", "a"], "score": [80.0, 60.0, 90.0], "partner_score": [60.0, 80.0, 70.0], "error": [None, None, None]},
        schema_overrides={"position": pl.Int8, "cluster": pl.Int32, "round": pl.Int32},
    )
    assert bradley_terry_strengths(judged) == pytest.approx(bradley_terry(["a", "c"], ["b", "a"], [1.0, 1.0]))
    strength = bradley_terry_strengths(judged)
    assert strength["c"] > strength["a"] > strength["b"]


def test_raw_scores_and_bradley_terry_strengths_can_pick_differently():
    # Raw means: a (100 + 40) / 2 = 70, b 54.5, c 55: raw picks a. Wins: c beat b and a, a beat b
    # only, b lost both: Bradley-Terry picks c.
    c = Candidates(pl.DataFrame({"row_id": ["a", "b", "c"]}), comparisons=three_calls())
    raw = pick(c, Budget(1, 1, 3), TacosSettings(per_cluster=1, fill_quota=False))
    assert raw.order == [0] and raw.gain[0] == pytest.approx(70.0)
    bt = pick(c, Budget(1, 1, 3), TacosSettings(per_cluster=1, fill_quota=False, tacos_aggregation="bradley_terry"))
    strength = bradley_terry(["a", "c", "a"], ["b", "b", "c"], [1.0, 1.0, 0.0])
    assert bt.order == [2] and bt.gain[2] == pytest.approx(strength["c"])
    assert strength["c"] > strength["a"] > strength["b"]
    assert raw.extra["picked_for_cluster"][0] == 0 and np.isnan(raw.extra["picked_for_cluster"][1])


def test_no_comparisons_is_a_clear_error():
    with pytest.raises(ValueError, match="comparative_scores"):
        pick(Candidates(pl.DataFrame({"row_id": ["a"]})), Budget(1, 1, 1), TacosSettings())
