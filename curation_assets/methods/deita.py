"""DEITA's complexity and quality scores (hkust-nlp/deita, selection/scorer/*.py and
pipeline/score_pipeline.py; research/anchors.md).

A DEITA scorer is a causal LM fine-tuned to answer a fixed prompt with a digit 1-6. The score is
the expectation of that digit under the softmax of the next-token logits restricted to the six
digit tokens. Each user turn of a conversation is scored with its answer (the next assistant turn,
"" when there is none); the row's DEITA score is the sum over turns of complexity x quality
(Combined_Filter's sort key, `selection.deita_score`).

The templates are the scorers' input format: the fine-tuned scorers expect exactly this text.
Deviation: the reference reads the first generated token's scores from `generate`, which equal
these logits when the model's generation config applies no logits processors; a prompt longer
than the scorer's window is NaN here (the reference fails).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import torch
from pydantic import Field

from curation_assets.methods import selection as rules
from curation_assets.methods.plugin import Budget, Candidates, Column, Picked, ScoreMethod, Settings, Strategy, empty_gain
from curation_assets.methods.token_losses import next_token_logits

VERSION = "1"
STRATEGY_VERSION = "2"  # 2: rows without a DEITA score are never selected (1 scanned them last and could keep them)

COMPLEXITY_TEMPLATE = "You are a helpful assistant. Please identify the complexity score of the following user query. \n##Query: {instruction}  \n##Complexity: "
QUALITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the Question. "
    "\n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
SCORE_VALUES = np.arange(1, 7, dtype=np.float64)


def turn_pairs(messages: Sequence[dict]) -> list[tuple[str, str]]:
    """(user turn, the assistant turn after it or "") for every user turn; system turns dropped."""
    turns = [m for m in messages if m["role"] != "system"]
    return [
        (m["content"], turns[k + 1]["content"] if k + 1 < len(turns) and turns[k + 1]["role"] == "assistant" else "")
        for k, m in enumerate(turns)
        if m["role"] == "user"
    ]


def digit_token_ids(tokenizer, digits: Sequence[str] = ("1", "2", "3", "4", "5", "6")) -> list[int]:
    """The vocabulary ids of the digit tokens (Llama: 29896..., Mistral: 28740..., as DEITA hard-codes)."""
    ids = tokenizer.convert_tokens_to_ids(list(digits))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(f"the scorer's vocabulary has no single tokens for {list(digits)}")
    return list(ids)


def expected_scores(model, tokenizer, prompts: Sequence[str], *, max_length: int, token_budget: int | None = None) -> np.ndarray:
    """E[digit] for each prompt, float64; NaN where the prompt does not fit in `max_length` tokens."""
    encoded = [tokenizer.encode(p) for p in prompts]  # with the tokenizer's special tokens, as the reference
    fits = [i for i, ids in enumerate(encoded) if len(ids) <= max_length]
    out = np.full(len(prompts), np.nan)
    if fits:
        logits = next_token_logits(model, [encoded[i] for i in fits], digit_token_ids(tokenizer), token_budget=token_budget)
        probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
        out[fits] = probs @ SCORE_VALUES
    return out


# --------------------------------------------------------------------------- plugins


class DeitaSettings(Settings):
    pass


def compute(rows: pl.DataFrame, s: DeitaSettings, scorers) -> pl.DataFrame:
    """Per row: DEITA complexity and quality of each user turn, and the sum of their products."""
    pairs = [turn_pairs(m) for m in rows["messages"].to_list()]
    flat = [p for row in pairs for p in row]
    prompts = {
        "complexity": [COMPLEXITY_TEMPLATE.format(instruction=i) for i, _ in flat],
        "quality": [QUALITY_TEMPLATE.format(instruction=i, output=o) for i, o in flat],
    }
    scored = {kind: np.zeros(0) for kind in prompts}
    for kind, texts in prompts.items():
        if texts:
            scorer = scorers.scorer(kind)
            tokenizer, model = scorer.load()
            window = int(getattr(model.config, "max_position_embeddings", 1 << 30))
            scored[kind] = expected_scores(model, tokenizer, texts, max_length=window, token_budget=scorer.token_budget)
    bounds = np.cumsum([0] + [len(p) for p in pairs])
    complexity = [scored["complexity"][a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    quality = [scored["quality"][a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
    return pl.DataFrame({
        "row_id": rows["row_id"],
        "deita_complexity": complexity,
        "deita_quality": quality,
        "deita_score": rules.deita_score([complexity, quality]),
    }, schema=DEITA_SCORE.schema())


DEITA_SCORE = ScoreMethod(
    name="deita",
    description="DEITA complexity and quality per user turn (its scorers' expected digit 1-6)",
    settings=DeitaSettings,
    version=VERSION,
    columns={
        "deita_complexity": Column(pl.List(pl.Float64), "DEITA complexity of each user turn."),
        "deita_quality": Column(pl.List(pl.Float64), "DEITA quality of each user turn with its answer."),
        "deita_score": Column(pl.Float64, "Sum over turns of complexity x quality (Combined_Filter's sort key)."),
    },
    compute=compute,
    offers=("deita_score",),
    model="deita_scorers",
    histograms={"deita_score": "DEITA score (sum of complexity x quality)"},
    extra_key=lambda s: [COMPLEXITY_TEMPLATE, QUALITY_TEMPLATE],
)


class DeitaStrategySettings(Settings):
    deita_keys: list[str] = Field(["deita_score"], description="Scores multiplied into the sort key (DEITA: deita_score, complexity x quality).")
    deita_threshold: float = Field(0.9, description="Reject a row whose cosine to a kept row is above this.")
    deita_batch_size: int = Field(1, description="The reference's batch semantics when > 1.")


def pick(c: Candidates, budget: Budget, s: DeitaStrategySettings) -> Picked:
    if c.embed is None:
        raise ValueError("the deita strategy needs an embedder")
    score = np.ones(c.n)
    for key in s.deita_keys:
        score = score * c.column(key)
    # Rows without a score (a prompt longer than the scorer's window, where the reference fails) are
    # ineligible: scan only the scored rows, in deita_filter's own (-score, index) order.
    scored = np.flatnonzero(~np.isnan(score))
    scan = scored[np.lexsort((scored, -score[scored]))].tolist()
    result = rules.deita_filter(c.embeddings(), score, s.deita_threshold, budget.rows, s.deita_batch_size, order=scan)
    gain = empty_gain(c.n)
    gain[result.selected] = score[result.selected]
    ids = c.rows["row_id"].to_list()
    reason = {row: f"cosine {sim:.3f} > {s.deita_threshold} to the already selected {ids[partner]}" for row, (partner, sim) in result.rejected_by.items()}
    scanned = set(result.selected) | set(result.rejected_by)
    for i in range(c.n):
        if i not in scanned:
            reason[i] = "budget reached before this row's score" if not np.isnan(score[i]) else "no score"
    ineligible = set(result.rejected_by) | {i for i in range(c.n) if np.isnan(score[i])}
    return Picked(result.selected, gain, f"score ({' x '.join(s.deita_keys)})", reason, ineligible)


DEITA = Strategy(
    name="deita",
    description="DEITA's score-first representation filter: by score, rejecting rows too close to a kept one.",
    settings=DeitaStrategySettings,
    version=STRATEGY_VERSION,
    pick=pick,
)
