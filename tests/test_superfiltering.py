"""methods/superfiltering.py: the `ifd` score method on a tiny model and the `superfiltering`
strategy (IFD below the threshold, highest first; reference_pool_size as select_data.py)."""

from pathlib import Path

import numpy as np
import polars as pl

from curation_assets.methods import selection as rules
from curation_assets.methods.ifd import Sample, plain_ifd
from curation_assets.methods.plugin import Budget, Candidates
from curation_assets.methods.superfiltering import IFD, IFDSettings, SuperfilteringSettings, compute, pick
from resources.scorer import CausalLMScorerResource

TINY_GPT2 = Path(__file__).parent / "fixtures" / "tiny_gpt2"


def test_superfiltering_reference_pool_size_reproduces_the_hardcoded_count():
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


def test_pick_keeps_ifd_below_the_threshold_highest_first_with_a_reason_per_row():
    ifd = [0.5, 1.2, float("nan"), 0.8, 1.0]
    c = Candidates(pl.DataFrame({"row_id": list("abcde"), "ifd_ppl": ifd}))
    picked = pick(c, Budget(1, 1, c.n), SuperfilteringSettings())
    assert picked.order == [3] and picked.gain[3] == 0.8 and np.isnan(picked.gain[0])
    assert picked.reason == {0: "IFD below the budget", 1: "IFD 1.2 >= 1.0", 2: "no IFD", 4: "IFD 1 >= 1.0"}
    assert picked.ineligible == {1, 2, 4} and picked.budget is None and picked.budget_rule is None
    assert pick(c, Budget(5, 5, c.n), SuperfilteringSettings(ifd_threshold=1.1)).order == [4, 3, 0]


def test_compute_gives_plain_ifds_columns_per_row_in_order():
    rows = pl.DataFrame({
        "row_id": ["r1", "r2"],
        "instruction": ["Name a colour.", "Add two and three."],
        "input": ["", ""],
        "response": ["Blue is a colour.", "Five."],
        "messages": [[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue is a colour."}],
                     [{"role": "user", "content": "Add two and three."}, {"role": "assistant", "content": "Five."}]],
    })
    scorer = CausalLMScorerResource(model=str(TINY_GPT2))
    out = compute(rows, IFDSettings(max_length=64), scorer)
    tokenizer, model = scorer.load()
    expected = plain_ifd(model, tokenizer, [Sample("Name a colour.", "", "Blue is a colour."), Sample("Add two and three.", "", "Five.")], max_length=64)
    assert out.schema == IFD.schema() and out["row_id"].to_list() == ["r1", "r2"]
    np.testing.assert_allclose(out["ifd_ppl"].to_numpy(), [e.ifd_ppl for e in expected], rtol=1e-12)
    np.testing.assert_allclose(out["sf_loss_cond"].to_numpy(), [e.sf_loss_cond for e in expected], rtol=1e-12)
    assert out["response_tokens"].to_list() == [e.response_tokens for e in expected]
    assert all(v > 0 for v in out["ifd_ppl"].to_list())
