"""methods/tags.py: the `tags` strategy on a hand-sized tree, its quality q(x), and the target
domain's leaf mass."""

import numpy as np
import polars as pl
import pytest

from curation_assets.methods.plugin import Budget, Candidates
from curation_assets.methods.tags import TagsSettings, pick, tags_quality, target_leaf_mass

# root 0 -> leaves 1 ("python") and 2 ("baking"); rows a and b on leaf 1, c on leaf 2, d on none.
NODES = pl.DataFrame({"node_id": [0, 1, 2], "parent_id": [None, 0, 0], "depth": [0, 1, 1], "is_leaf": [False, True, True],
                      "label": ["root", "python", "baking"], "member_tags": [["python", "baking"], ["python"], ["baking"]]})
MEMBERS = pl.DataFrame({"row_id": ["a", "b", "c"], "node_id": [1, 1, 2], "weight": [1.0, 1.0, 1.0]})


def candidates(**columns):
    return Candidates(pl.DataFrame({"row_id": ["a", "b", "c", "d"], **columns}), memberships=MEMBERS, nodes=NODES)


def test_pick_spreads_over_the_leaves_and_says_why_the_rest_was_left():
    # First picks tie (each adds mass 1 to an empty leaf): the lowest row, a. Then c's empty leaf
    # gains phi(1) - phi(0), more than b's phi(2) - phi(1): the concave gain prefers diversity.
    picked = pick(candidates(), Budget(2, 2, 4), TagsSettings())
    assert picked.order == [0, 2]
    assert picked.reason[3] == "no tree leaf: no information to add"
    assert picked.reason[1].startswith("budget reached: information gain now")
    assert picked.gain[0] == pytest.approx(picked.gain[2]) and np.isnan(picked.gain[1])
    assert picked.summary["entropy_depth_1"] == pytest.approx(1.0)  # one row on each leaf


def test_quality_transforms():
    values = [2.0, float("nan"), 4.0, 3.0]
    c = candidates(score=values)
    np.testing.assert_allclose(tags_quality(c, TagsSettings(quality_score="score")), [0, 0, 1, 0.5])
    np.testing.assert_allclose(tags_quality(c, TagsSettings(quality_score="score", quality_transform="percentile")), [1 / 3, 0, 1, 2 / 3])
    raw = candidates(score=[-1.0, float("nan"), 4.0, 3.0])
    np.testing.assert_allclose(tags_quality(raw, TagsSettings(quality_score="score", quality_transform="raw")), [0, 0, 4, 3])
    # InsTag's complexity factor: 1 + log(1 + leaves); row d has no leaf.
    np.testing.assert_allclose(tags_quality(c, TagsSettings(complexity_factor=True)), [1 + np.log(2)] * 3 + [1])


def test_without_a_tree_the_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="knowledge_tree"):
        pick(Candidates(pl.DataFrame({"row_id": ["a"]})), Budget(1, 1, 1), TagsSettings())
    with pytest.raises(ValueError, match="not in the tree"):
        target_leaf_mass(candidates(), TagsSettings(target_leaves=["cooking"]))


def test_target_leaf_mass_shares_each_prompt_over_its_grounded_nodes():
    # root 0 -> inner 1 (leaves 3, 4, 5) and leaf 2; a leaf list naming leaf 2 and node 1 is one prompt.
    nodes = pl.DataFrame({
        "node_id": [0, 1, 2, 3, 4, 5], "label": ["root", "inner", "x", "a", "b", "c"], "is_leaf": [False, False, True, True, True, True],
        "member_tags": [["x", "a", "b", "c"], ["a", "b", "c"], ["x"], ["a"], ["b"], ["c"]],
    })
    mass = target_leaf_mass(Candidates(pl.DataFrame({"row_id": []}), nodes=nodes, vocabulary=pl.DataFrame()), TagsSettings(target_leaves=["x", "inner"]))
    assert mass == pytest.approx({2: 0.5, 3: 1 / 6, 4: 1 / 6, 5: 1 / 6})
