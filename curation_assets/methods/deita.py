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
import torch

from curation_assets.methods.token_losses import next_token_logits

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
