"""TACOS comparative scoring within tag clusters (research/tags-tacos.md §1.4, §1.5;
reference-quirks.md §7).

Faithful default: in each cluster, the cluster's label-set representatives, in the order their label
sets first appear in the pool (tag_process.py keeps a set's first slot when a longer response
replaces its representative), form
disjoint consecutive pairs (0-1, 2-3, ...); a judge scores both items of a pair, 0-100, in one call,
and each item keeps the score it got beside its partner. The reference drops an odd cluster's last
item; here it is paired with a random item of the cluster that already has a score, and only the
leftover's score is kept (research PROPOSAL). Options: `rounds` > 1 random re-pairings, each scored
in both orders and averaged (position bias and partner luck), and Bradley-Terry strengths fitted on
the implied wins.

The answer parser reads the prompt's own "[Response k]: score" lines, or failing those the common
variants (the last score after "Response k" counts); an answer without both scores, or with one outside
0-100, is re-asked and at last recorded as unscored, never as 0 (the reference's regex did not match
its own prompt's format and turned every miss into a 0).

`parser="reference"` reproduces TACOS exactly instead (api_score_pairs.py, sorted_1000.py): the
prompt filled by chained replacement (instruction 1, instruction 2, response 1, response 2, so an item
holding another placeholder's text is rewritten), an odd cluster's last item dropped, and each score
read by the regex `\[Response k\] Score: (\d+)`, the first match winning and a missing one read as
0; scores above 100 are kept (the budget never selects them). With our pair prompt, whose answer
lines are "[Response k]: score", a judge that follows the prompt scores 0 throughout, as in the
reference; one that writes "[Response k] Score: n" (the ALIGNMENT prompt's format) is read.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from curation_assets.methods.chat import Messages, ParseError

# The AlpaGasus system message that TACOS's scorer sends (quoted in the research notes).
JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
PAIR_PROMPT = (
    "You are an expert on supervised fine-tuning (SFT) data. Compare the two data items below and "
    "score the quality of each one.\n"
    "Judge how complete, clear, accurate, relevant, well explained, practical and safe each response "
    "is as an answer to its instruction.\n"
    "Rules:\n"
    "- Score strictly and critically.\n"
    "- Judge each item's response on its own; quality has nothing to do with length or position.\n"
    "- Do not take diversity into account.\n"
    "- Only this single-turn exchange counts.\n"
    "The two items are about related topics. Give each a score from 0 to 100, weighting the seven "
    "aspects equally. First write an overall analysis of both items, then a score and a short "
    "explanation per aspect for each item, and end with exactly these two lines:\n"
    "[Response 1]: <score>\n[Response 2]: <score>\n\n"
    "[Instruction 1]\n{instruction_1}\n[Response 1]\n{response_1}\n\n"
    "[Instruction 2]\n{instruction_2}\n[Response 2]\n{response_2}"
)
_SCORE_LINE = re.compile(r"^[\s*#>-]*\[Response ([12])\][\s:=*\[]*(?:score[\s:=*\[]*)?(-?\d+(?:\.\d+)?)", re.IGNORECASE | re.MULTILINE)
_SCORE = re.compile(r"Response\s*([12])\s*\**\s*\]?\s*\**\s*(?:score|rating)?\s*\**\s*[:：=\-]?\s*\**\s*\[?\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def pair_messages(first: tuple[str, str], second: tuple[str, str], *, chained: bool = False) -> Messages:
    """The judge prompt for (instruction, response) pairs; filled once, so text that looks like a
    placeholder inside an item is left alone. `chained` fills it as api_score_pairs.py does, one
    str.replace after another, where it is not."""
    fields = {"instruction_1": first[0], "instruction_2": second[0], "response_1": first[1], "response_2": second[1]}
    if chained:
        user = PAIR_PROMPT
        for name, value in fields.items():  # the reference's order
            user = user.replace("{" + name + "}", value)
    else:
        user = re.sub(r"\{(instruction_[12]|response_[12])\}", lambda m: fields[m.group(1)], PAIR_PROMPT)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_REFERENCE_SCORE = {k: re.compile(rf"\[Response {k}\] Score: (\d+)") for k in ("1", "2")}


def parse_pair_scores_reference(text: str) -> tuple[float, float]:
    """sorted_1000.py's reading: the first `[Response k] Score: <digits>` for each k, 0 where there
    is none; no range check. Only an empty answer is an error (api_score_pairs.py saves none)."""
    if not text:
        raise ParseError("empty answer")
    scores = []
    for k in ("1", "2"):
        found = _REFERENCE_SCORE[k].findall(text)
        scores.append(float(int(found[0])) if found else 0.0)
    return scores[0], scores[1]


def parse_pair_scores(text: str) -> tuple[float, float]:
    """The two scores: the prompt's own "[Response k]: score" lines when both are there (prose after
    them cannot override), else the last score written after each "Response k"."""
    found: dict[str, float] = {}
    for pattern in (_SCORE_LINE, _SCORE):
        found = {}
        for match in pattern.finditer(text or ""):
            found[match.group(1)] = float(match.group(2))
        if set(found) == {"1", "2"}:
            break
    if set(found) != {"1", "2"}:
        raise ParseError("no '[Response 1]: score' and '[Response 2]: score' lines")
    scores = (found["1"], found["2"])
    if not all(0 <= s <= 100 for s in scores):
        raise ParseError(f"scores {scores} outside 0-100")
    return scores


# A small local judge rarely ends with the two score lines (SmolLM2-135M loops or echoes the prompt
# under greedy decoding). Our fallback, not TACOS's: continue its own answer from "[Response k]:"
# and read the number it writes there. Answers kept up to here, so a loop does not swamp the prefill.
PREFILL_ANSWER_CHARS = 1500
PREFILL_TOKENS = 6
_PREFILLED_SCORE = re.compile(r"^\s*\**\s*(\d{1,3}(?:\.\d+)?)")


def score_prefill(messages: Messages, answer: str, known: tuple[float, ...] = ()) -> Messages:
    """`messages` plus the judge's answer left open at the next "[Response k]:" line, the scores
    in `known` (those of the responses before k) already written."""
    lines = [f"[Response {k}]: {score:g}" for k, score in enumerate(known, 1)] + [f"[Response {len(known) + 1}]:"]
    return [*messages, {"role": "assistant", "content": (answer or "")[:PREFILL_ANSWER_CHARS].rstrip() + "\n\n" + "\n".join(lines)}]


def parse_prefilled_score(text: str) -> float:
    """The 0-100 number a prefilled "[Response k]:" was continued with."""
    match = _PREFILLED_SCORE.match(text or "")
    if not match or not 0 <= float(match.group(1)) <= 100:
        raise ParseError(f"no 0-100 score after the prefilled line (got {(text or '')[:20]!r})")
    return float(match.group(1))


@dataclass(frozen=True)
class Comparison:
    """One judge call: `first` and `second` are row ids; `keep` says whose scores count."""

    cluster: int
    round: int
    first: str
    second: str
    keep: tuple[bool, bool] = (True, True)


def cluster_members(representatives) -> dict[int, list[str]]:
    """TACOS's cluster map (tag_process.py, step 2): walk the label-set representatives in the order
    their sets first appear, and each one's clusters in the order of its tags (not sorted); a
    cluster's members, and the clusters themselves, follow first appearance. `representatives`
    yields (row_id, clusters in tag order)."""
    members: dict[int, list[str]] = {}
    for row_id, clusters in representatives:
        for c in clusters:
            members.setdefault(int(c), []).append(row_id)
    return members


def plan_comparisons(
    members: dict[int, list[str]], *, rounds: int = 1, both_orders: bool = False, seed: int = 0, drop_odd: bool = False
) -> list[Comparison]:
    """Pairs per cluster, clusters in the given order. Round 0 is TACOS's: consecutive pairs in the
    given member order (the order in which label sets first appear in the pool); later
    rounds shuffle the cluster first. An odd leftover meets a random earlier item of its cluster,
    and only its own score is kept; `drop_odd` drops it instead, as TACOS does. A cluster of one
    has no partner and stays unscored."""
    rng = random.Random(seed)
    plan = []
    for cluster in members:
        rows = members[cluster]
        for r in range(rounds):
            order = list(rows) if r == 0 else rng.sample(rows, len(rows))
            pairs = [(order[i], order[i + 1], (True, True)) for i in range(0, len(order) - 1, 2)]
            if len(order) % 2 and len(order) > 1 and not drop_odd:
                pairs.append((order[-1], rng.choice(order[:-1]), (True, False)))
            for a, b, keep in pairs:
                plan.append(Comparison(cluster, r, a, b, keep))
                if both_orders:
                    plan.append(Comparison(cluster, r, b, a, keep[::-1]))
    return plan


def bradley_terry(first, second, result, iterations: int = 500, tol: float = 1e-10) -> dict[str, float]:
    """Log-strengths from judged pairs: result is 1 where first beat second, 0.5 for a tie, 0 where
    second won (Hunter's MM algorithm on the sparse pair list, with half a win and half a loss against
    a virtual item of strength 1, which keeps unbeaten items finite and fixes the scale)."""
    items, codes = np.unique(np.concatenate([np.asarray(first, dtype=object), np.asarray(second, dtype=object)]).astype(str), return_inverse=True)
    if not len(items):
        return {}
    a, b = np.split(codes, 2)
    r = np.asarray(result, dtype=np.float64)
    n = len(items)
    wins = 0.5 + np.bincount(a, weights=r, minlength=n) + np.bincount(b, weights=1.0 - r, minlength=n)
    p = np.ones(n)
    for _ in range(iterations):
        inverse = 1.0 / (p[a] + p[b])
        denom = np.bincount(a, weights=inverse, minlength=n) + np.bincount(b, weights=inverse, minlength=n) + 1.0 / (p + 1.0)
        new = wins / denom
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    return dict(zip(items.tolist(), np.log(p).tolist()))
