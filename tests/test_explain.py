"""methods/explain.py: the reasons table (one row per candidate: selected or why not, scores with
pool percentiles, tree path, nearest selected row) and its parts."""

import numpy as np
import polars as pl
import pytest

from curation_assets.methods.explain import budget_rule, explain, nearest_selected, percentiles, score_lists, tree_paths
from curation_assets.methods.generic import TOP_K
from curation_assets.methods.plugin import Candidates, Picked


def test_budget_rule_reads_as_a_share_or_a_count():
    assert budget_rule(0.05, 1000, 50) == "0.05 of 1,000 candidates = 50 rows"
    assert budget_rule(30, 1000, 30) == "30 rows requested of 1,000 candidates"


def test_percentiles_rank_ties_at_their_highest_and_leave_nan_out():
    out = percentiles(np.array([1.0, np.nan, 3.0, 1.0]))
    np.testing.assert_allclose(out, [200 / 3, np.nan, 100.0, 200 / 3])
    assert np.isnan(percentiles(np.array([np.nan]))).all()


def test_tree_paths_join_each_leaf_of_a_row():
    nodes = pl.DataFrame({"node_id": [0, 1, 2, 3], "parent_id": [None, 0, 1, 0], "depth": [0, 1, 2, 1],
                          "is_leaf": [False, False, True, True], "label": ["root", "code", "python", "baking"]})
    memberships = pl.DataFrame({"row_id": ["a", "a", "b"], "node_id": [2, 3, 3], "weight": [0.5, 0.5, 1.0]})
    rows = pl.DataFrame({"row_id": ["a", "b", "c"]})
    paths = tree_paths(rows, memberships, nodes)
    assert paths[1] == "baking" and paths[2] is None
    assert sorted(paths[0].split(" | ")) == ["baking", "code > python"]
    assert tree_paths(rows, None, None) == [None, None, None]


def test_explain_gives_every_candidate_its_row():
    rows = pl.DataFrame({"row_id": ["a", "b", "c"], "instruction": ["i"] * 3, "input": [""] * 3, "response": ["r"] * 3,
                         "ifd_ppl": [0.9, np.nan, 0.4], "source_file": ["f.jsonl"] * 3, "source_row": [0, 1, 2]})
    c = Candidates(rows)
    gain = np.array([0.9, np.nan, np.nan])
    picked = Picked([0], gain, "ifd_ppl", {1: "no score"}, {1})
    table = explain(c, picked, TOP_K, 1, "1 rows requested of 3 candidates", ["ifd_ppl", "absent_score"], neighbours=False)
    assert table["row_id"].to_list() == ["a", "b", "c"] and table["selected"].to_list() == [True, False, False]
    assert table["rank"].to_list() == [1, None, None] and table["eligible"].to_list() == [True, False, True]
    assert table["reason"].to_list() == ["selected: rank 1 of 1, ifd_ppl 0.9", "no score", "not selected"]
    assert table["gain"].to_list() == [0.9, None, None] and table["strategy"].unique().to_list() == ["top_k"]
    assert table["scores"][2].to_list() == [{"name": "ifd_ppl", "value": 0.4, "percentile": 50.0}]
    assert table["tree_path"].dtype == pl.String and table["canonical_tags"].dtype == pl.List(pl.String)
    assert table["nearest_selected"].to_list() == [None] * 3 and table["source_row"].to_list() == [0, 1, 2]


def test_score_lists_keep_each_rows_scores_with_pool_percentiles():
    values = {"a": np.array([0.5, np.nan, 2.0, 1.0]), "b": np.array([np.nan, np.nan, 3.0, 1.0])}
    assert score_lists(values, 4).to_list() == [
        [{"name": "a", "value": 0.5, "percentile": 100 / 3}],
        [],
        [{"name": "a", "value": 2.0, "percentile": 100.0}, {"name": "b", "value": 3.0, "percentile": 100.0}],
        [{"name": "a", "value": 1.0, "percentile": 200 / 3}, {"name": "b", "value": 1.0, "percentile": 50.0}],
    ]
    assert score_lists({}, 2).to_list() == [[], []]


def test_nearest_selected_is_the_most_similar_row_picked_before():
    unit = lambda deg: [np.cos(np.radians(deg)), np.sin(np.radians(deg))]  # noqa: E731
    emb = np.array([unit(0), unit(10), unit(50), unit(95)], dtype=np.float32)
    nearest, sims = nearest_selected(emb, [2, 0])  # row 2 picked first, then row 0
    assert nearest.tolist() == [2, 0, -1, 2]  # row 0: only row 2 came before it; row 1 is nearest to row 0
    assert np.isnan(sims[2]) and sims[0] == pytest.approx(np.cos(np.radians(50)), abs=1e-6)
    assert sims[3] == pytest.approx(np.cos(np.radians(45)), abs=1e-6)
