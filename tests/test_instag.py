"""methods/instag.py: the `instag` strategy (most-tagged rows first, each pass adding unseen tags)."""

import numpy as np
import polars as pl
import pytest

from curation_assets.methods.instag import InstagSettings, pick
from curation_assets.methods.plugin import Budget, Candidates


def test_pick_reports_new_tags_and_why_rows_were_left():
    tags = [["a"], ["a", "b", "c"], ["b", "c"], ["c", "d"], [], ["a", "b", "c"], None]
    c = Candidates(pl.DataFrame({"row_id": list("abcdefg"), "canonical_tags": tags}))
    picked = pick(c, Budget(2, 2, 7), InstagSettings())
    assert picked.order == [1, 3] and picked.gain[1] == 3 and picked.gain[3] == 1 and np.isnan(picked.gain[0])
    assert picked.ineligible == {4, 6} and picked.reason[4] == picked.reason[6] == "no canonical tags"
    assert picked.reason[0] == "budget reached before it added a tag in its pass" and picked.gain_name == "new tags in its pass"


def test_without_normalized_tags_it_is_a_clear_error():
    with pytest.raises(ValueError, match="normalized_tags"):
        pick(Candidates(pl.DataFrame({"row_id": ["a"]})), Budget(1, 1, 1), InstagSettings())
