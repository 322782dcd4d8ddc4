"""methods/generic.py: the `top_k` and `random` strategies, with a reason for every row left out."""

import numpy as np
import polars as pl
import pytest

from curation_assets.methods import selection as rules
from curation_assets.methods.generic import RandomSettings, TopKSettings, pick_random, pick_top_k
from curation_assets.methods.plugin import Budget, Candidates

C = Candidates(pl.DataFrame({"row_id": list("abcde"), "ifd_ppl": [0.5, None, 0.9, 0.2, 0.5]}))


def test_top_k_by_a_score_with_a_cut():
    picked = pick_top_k(C, Budget(2, 2, 5), TopKSettings(score_below=0.8))
    assert picked.order == [0, 4]  # 0.5 and 0.5 (ties to the lower row); 0.9 is cut
    assert picked.reason == {1: "no score", 2: "ifd_ppl 0.9 not below 0.8", 3: "ifd_ppl below the budget"}
    assert picked.ineligible == {1, 2} and picked.gain[0] == 0.5 and np.isnan(picked.gain[3])
    assert pick_top_k(C, Budget(2, 2, 5), TopKSettings(descending=False)).order == [3, 0]
    with pytest.raises(ValueError, match="'deita_score' is not available"):
        pick_top_k(C, Budget(1, 1, 5), TopKSettings(score="deita_score"))


def test_random_is_the_seeded_draw():
    picked = pick_random(C, Budget(3, 3, 5), RandomSettings(seed=4))
    assert picked.order == rules.random_subset(5, 3, 4) and len(set(picked.order)) == 3
    assert set(picked.reason) == set(range(5)) - set(picked.order) and set(picked.reason.values()) == {"not drawn (seed 4)"}
    assert pick_random(C, Budget(3, 3, 5), RandomSettings(seed=4)).order == picked.order
