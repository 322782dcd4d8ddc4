"""methods/cherry.py: the `cherry` score method on a tiny model and the `cherry` strategy (a
fractional budget is a share of the rows Cherry's rules keep, as data_by_IFD.py)."""

from pathlib import Path

import numpy as np
import polars as pl

from curation_assets.methods.cherry import CHERRY_SCORE, CherrySettings, CherryStrategySettings, compute, pick
from curation_assets.methods.ifd import Sample, cherry_ifd
from curation_assets.methods.plugin import Budget, Candidates
from resources.scorer import CausalLMScorerResource

TINY_GPT2 = Path(__file__).parent / "fixtures" / "tiny_gpt2"


def test_a_fractional_budget_is_a_share_of_the_kept_rows():
    c = Candidates(pl.DataFrame({"row_id": list("abcde"), "ifd_loss": [2.0, 0.5, None, 1.5, 3.0],
                                 "cherry_skip": [None, None, None, "too long", None]}))
    # 4 rows kept (the NaN one counts, as in the reference): int(4 x 0.6) = 2, where the pool's 5 would give 3.
    picked = pick(c, Budget(3, 0.6, 5), CherryStrategySettings())
    assert picked.order == [4, 0] and picked.budget == 2 and picked.budget_rule == "0.6 of 4 rows kept by Cherry's rules = 2 rows"
    assert picked.reason == {1: "IFD below the budget (2 of 4 rows kept by Cherry's rules)", 2: "no IFD", 3: "skipped by Cherry's rule: too long"}
    assert picked.ineligible == {2, 3} and picked.gain[4] == 3.0
    count = pick(c, Budget(3, 3, 5), CherryStrategySettings())  # a count is a count
    assert count.order == [4, 0, 1] and count.budget is None


def test_compute_gives_cherry_ifds_columns():
    rows = pl.DataFrame({
        "row_id": ["r1"], "instruction": ["Name a colour."], "input": [""], "response": ["Blue is a colour."],
        "messages": [[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue is a colour."}]],
    })
    scorer = CausalLMScorerResource(model=str(TINY_GPT2))
    out = compute(rows, CherrySettings(cherry_prompt="wiz"), scorer)
    tokenizer, model = scorer.load()
    [expected] = cherry_ifd(model, tokenizer, [Sample("Name a colour.", "", "Blue is a colour.")], max_length=512, prompt="wiz")
    assert out.schema == CHERRY_SCORE.schema() and out["row_id"].to_list() == ["r1"]
    np.testing.assert_allclose(out["ifd_loss"].to_numpy(), [expected.ifd_loss], rtol=1e-12)
    assert np.isclose(out["ifd_loss"][0], out["cherry_loss_cond"][0] / out["cherry_loss_direct"][0], rtol=1e-12)  # IFD = the loss ratio
    assert out["cherry_skip"].to_list() == [expected.skip]
