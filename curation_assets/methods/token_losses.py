"""Per-token cross-entropy of many sequences at once: the engine under every IFD-style score.

A request is a token sequence and a span [start, end) of positions to score; position p is scored
as CE(logits[p - 1], ids[p]), so position 0 never is. Requests are sorted by length and packed into
right-padded batches of at most `token_budget` padded tokens. Only the hidden states of scored
positions go through the LM head, in chunks, with the cross-entropy in float32; a batch that runs
out of GPU memory is split in two and retried. Optional per-request embedding offsets (T-SHIRT's
noise) are added to the input embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Logits elements per LM-head chunk, and padded tokens per batch, by device: large batches feed a GPU;
# on a CPU, batches that stay in cache win (measured: benchmarks/bench_scores.py).
LOGITS_PER_CHUNK = {"cuda": 1 << 28, "cpu": 1 << 23}
TOKEN_BUDGET = {"cuda": 32768, "cpu": 2048}


def default_token_budget(model) -> int:
    return TOKEN_BUDGET.get(next(model.parameters()).device.type, TOKEN_BUDGET["cpu"])


@dataclass
class LossRequest:
    ids: Sequence[int]
    start: int
    end: int
    # Called with (device, dtype) for an (len(ids), hidden) tensor added to the input embeddings.
    embed_offset: Callable[[torch.device, torch.dtype], torch.Tensor] | None = None


def batches_by_budget(lengths: Sequence[int], token_budget: int, max_rows: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first, rows x max length <= budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        n = max(lengths[i], 1)
        if current and (max(longest, n) * (len(current) + 1) > token_budget or len(current) >= max_rows):
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def _lm_head_and_norm(model):
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return head, softcap


def added_pad_row(model, vocab_size: int) -> tuple[int, torch.Tensor, torch.Tensor | None]:
    """The LM head after IterIT's train.py adds a [PAD] token (smart_tokenizer_and_embedding_resize):
    the head resized to vocab_size + 1 rows, the new row (and bias) the mean of the first vocab_size,
    in the head's dtype. Returns (rows kept, new row, new bias) for `token_losses(extra_row=...)`."""
    head = model.get_output_embeddings()
    if head.weight.shape[0] < vocab_size:
        raise ValueError(f"the LM head has {head.weight.shape[0]} rows, fewer than the tokenizer's {vocab_size} tokens")
    with torch.no_grad():
        row = head.weight[:vocab_size].mean(dim=0, keepdim=True)
        bias = head.bias[:vocab_size].mean().reshape(1) if getattr(head, "bias", None) is not None else None
    return vocab_size, row, bias


def _forward_batch(model, requests: list[LossRequest], extra_row=None) -> list[np.ndarray]:
    device = next(model.parameters()).device
    ids, mask = _padded([r.ids for r in requests], device)
    rows, cols = [], []
    for b, r in enumerate(requests):
        lo, hi = max(r.start, 1), min(r.end, len(r.ids))
        if hi > lo:
            rows.append(torch.full((hi - lo,), b, dtype=torch.long))
            cols.append(torch.arange(lo, hi, dtype=torch.long))
    if not rows:
        return [np.zeros(0, dtype=np.float32) for _ in requests]
    rows_t, cols_t = torch.cat(rows).to(device), torch.cat(cols).to(device)

    kwargs = {"attention_mask": mask}
    if any(r.embed_offset is not None for r in requests):
        embeds = model.get_input_embeddings()(ids)
        for b, r in enumerate(requests):
            if r.embed_offset is not None:
                embeds[b, : len(r.ids)] += r.embed_offset(device, embeds.dtype)
        kwargs["inputs_embeds"] = embeds
    else:
        kwargs["input_ids"] = ids
    hidden = model.base_model(**kwargs).last_hidden_state
    head, softcap = _lm_head_and_norm(model)
    picked = hidden[rows_t, cols_t - 1]
    targets = ids[rows_t, cols_t]
    losses = torch.empty(len(rows_t), dtype=torch.float32, device=device)
    chunk = max(64, LOGITS_PER_CHUNK.get(device.type, LOGITS_PER_CHUNK["cpu"]) // head.out_features)
    for s in range(0, len(rows_t), chunk):
        logits = head(picked[s : s + chunk])
        if extra_row is not None:  # a resized vocabulary: the first `keep` logits and one more
            keep, row, bias = extra_row
            logits = torch.cat([logits[:, :keep], torch.nn.functional.linear(picked[s : s + chunk], row, bias)], dim=1)
        logits = logits.float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        losses[s : s + chunk] = torch.nn.functional.cross_entropy(logits, targets[s : s + chunk], reduction="none")
    losses = losses.cpu().numpy()
    counts = [max(min(r.end, len(r.ids)) - max(r.start, 1), 0) for r in requests]
    return np.split(losses, np.cumsum(counts)[:-1])


def _in_batches(model, lengths: Sequence[int], run: Callable[[list[int]], list], token_budget: int | None, max_rows: int) -> list:
    """run(batch indices) over length-sorted batches, results back in input order; a batch that
    runs out of GPU memory is split in two and retried."""
    token_budget = token_budget or default_token_budget(model)
    out: list = [None] * len(lengths)
    pending = batches_by_budget(lengths, token_budget, max_rows)
    with torch.inference_mode():
        while pending:
            batch = pending.pop(0)
            try:
                for i, result in zip(batch, run(batch)):
                    out[i] = result
            except torch.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                torch.cuda.empty_cache()
                half = len(batch) // 2
                pending[:0] = [batch[:half], batch[half:]]
    return out


def token_losses(model, requests: Sequence[LossRequest], *, token_budget: int | None = None, max_rows: int = 512, extra_row=None) -> list[np.ndarray]:
    """Float32 per-token losses of every request's span, in request order. The token budget
    defaults to the device's (TOKEN_BUDGET). `extra_row` (from added_pad_row) scores under a
    vocabulary grown by one mean-initialised token, without touching the model."""
    run = lambda batch: _forward_batch(model, [requests[i] for i in batch], extra_row)  # noqa: E731
    return _in_batches(model, [len(r.ids) for r in requests], run, token_budget, max_rows)


def next_token_logits(model, sequences: Sequence[Sequence[int]], token_ids: Sequence[int], *, token_budget: int | None = None, max_rows: int = 512) -> np.ndarray:
    """Float32 logits of `token_ids` for the token that would follow each sequence."""
    device = next(model.parameters()).device
    head, softcap = _lm_head_and_norm(model)
    wanted = torch.as_tensor(list(token_ids), dtype=torch.long, device=device)

    def run(batch: list[int]) -> list[np.ndarray]:
        ids, mask = _padded([sequences[i] for i in batch], device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(len(batch), device=device), mask.sum(dim=1) - 1]
        logits = head(last).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return list(logits[:, wanted].cpu().numpy())

    rows = _in_batches(model, [len(s) for s in sequences], run, token_budget, max_rows)
    return np.stack(rows) if rows else np.zeros((0, len(token_ids)), dtype=np.float32)


def _padded(sequences: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1
    return ids.to(device), mask.to(device)


def mean_or_nan(values: np.ndarray) -> float:
    """Mean in float64 of float32 losses; NaN for an empty span (as torch's mean of nothing)."""
    return float(values.astype(np.float64).mean()) if values.size else float("nan")
