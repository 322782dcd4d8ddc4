"""InsTag (research/tags-tacos.md §3): the `instag` strategy, complexity-first diverse sampling over
canonical tags (selection.instag, Algorithm 1), and its subset measures (selection.instag_metrics)."""

from __future__ import annotations

from curation_assets.methods import selection as rules
from curation_assets.methods.plugin import Budget, Candidates, Picked, Settings, Strategy, empty_gain, unpicked

VERSION = "1"


class InstagSettings(Settings):
    pass


def pick(c: Candidates, budget: Budget, s: InstagSettings) -> Picked:
    if "canonical_tags" not in c.rows.columns:
        raise ValueError("the instag strategy needs normalized_tags")
    tags = [t or [] for t in c.rows["canonical_tags"].to_list()]
    picked, new = rules.instag(tags, budget.rows)
    gain = empty_gain(c.n)
    gain[picked] = new
    untagged = {i for i, t in enumerate(tags) if not t}
    reason = {i: "no canonical tags" if i in untagged else "budget reached before it added a tag in its pass" for i in unpicked(c.n, picked)}
    return Picked(picked, gain, "new tags in its pass", reason, untagged)


INSTAG = Strategy(
    name="instag",
    description="InsTag: rows with the most tags first, each pass taking rows that add a tag not yet seen.",
    settings=InstagSettings,
    version=VERSION,
    pick=pick,
)
