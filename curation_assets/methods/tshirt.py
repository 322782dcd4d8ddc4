"""T-SHIRT: token-selective IFD over noisy neighbours, and its hierarchical selection
(research/tshirt-iterit.md §2; reference-quirks.md §2).

Scoring. Each sample's neighbours are M copies of itself with uniform noise in the input embedding
space: U(-1, 1)^{L x d} * alpha / sqrt(L d), alpha = 5, L = the truncated prompt+response length,
d = the embedding width. The direct pass of copy m reuses the noise of the response positions of
its conditional pass (with a BOS, a zero-noise row is prepended for it: research PROPOSAL; the
reference crashes there). The reference draws 31 copies and drops the last; drawing M = 30 is the
same distribution. Noise comes from a generator seeded by (seed, row_id), so a row's noisy scores do
not depend on which rows share its batch or shard (the reference's global RNG stream does).
Per copy: IFD_m = exp(mean l^c) / exp(mean l^u) and d_{m,t} = l^c_t - l^u_t (tokens 2..T without a
BOS), exactly as for the clean row (see ifd.py).

Statistics (compute_stat.py). tau = numpy percentile (linear) of |d| pooled over all samples,
copies and tokens at (1 - ratio) * 100; a token counts when float32(|d|) > float32(tau) (the
reference compares in float32); S-IFD_m = exp(sum of selected d / max(count, 1)), so no selected
token gives 1.0; mean and population std over the copies in float32. avg/std of the noisy IFDs in
float64 (numpy); NaN propagates.

Selection (tshirt_select.py). Drop rows whose avg noisy IFD is NaN or >= 1 or whose avg S-IFD is
NaN; keep the 2K largest avg S-IFD with a min-heap of (value, index) (ties: the earlier index goes
first); return the K smallest std S-IFD in heap order (heapq.nsmallest, so ties follow the heap).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

import polars as pl
from pydantic import Field

from curation_assets.methods.ifd import Sample, Tokens, plain_prompt, samples_of
from curation_assets.methods.plugin import Budget, Candidates, Column, Picked, ScoreMethod, Settings, Strategy, empty_gain
from curation_assets.methods.token_losses import LossRequest, mean_or_nan, token_losses

VERSION = "1"


@dataclass
class NoisyScores:
    noisy_ifd: np.ndarray  # (M,) float64
    noisy_d: list[np.ndarray]  # M arrays of float32
    error: str | None


class _NoiseBank:
    """Noise tensors (M, L, d) per sample, regenerated from their seed on demand (small LRU)."""

    def __init__(self, copies: int, alpha: float, dim: int, keep: int = 64):
        self.copies, self.alpha, self.dim, self.keep = copies, alpha, dim, keep
        self.cache: OrderedDict = OrderedDict()

    def get(self, seed: int, length: int, device, dtype) -> torch.Tensor:
        key = (seed, length, str(device), dtype)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        generator = torch.Generator(device=device).manual_seed(seed)
        noise = torch.empty((self.copies, length, self.dim), device=device, dtype=dtype).uniform_(-1, 1, generator=generator)
        noise *= self.alpha / math.sqrt(length * self.dim)
        self.cache[key] = noise
        if len(self.cache) > self.keep:
            self.cache.popitem(last=False)
        return noise


def row_seed(seed: int, row_key: str) -> int:
    return (int.from_bytes(hashlib.blake2b(row_key.encode(), digest_size=8).digest(), "little") ^ seed) & ((1 << 63) - 1)


def noisy_scores(
    model,
    tokenizer,
    samples: list[Sample],
    row_keys: list[str],
    *,
    copies: int = 30,
    alpha: float = 5.0,
    seed: int = 42,
    max_length: int = 1024,
    token_budget: int | None = None,
) -> list[NoisyScores]:
    tokens = Tokens(tokenizer)
    prompts = [plain_prompt(s) for s in samples]
    prompt_ids = tokens.encode(prompts)
    full_ids = tokens.encode([p + s.output for p, s in zip(prompts, samples)])
    output_ids = tokens.encode([s.output for s in samples])
    bos = 1 if tokens.has_bos else 0
    bank = _NoiseBank(copies, alpha, model.get_input_embeddings().embedding_dim)
    requests, layout = [], []
    for i, s in enumerate(samples):
        P = len(prompt_ids[i])
        budget = max_length - P + bos
        full = tokens.truncate(full_ids[i], max_length)
        if s.output == "" or budget <= 0:
            layout.append("empty response" if s.output == "" else "prompt longer than max_length")
            continue
        response = tokens.truncate(output_ids[i], budget)
        if len(response) - bos != len(full) - P:
            layout.append("conditional and direct spans differ (tokens merged at the boundary)")
            continue
        seed_i, L = row_seed(seed, row_keys[i]), len(full)
        layout.append(len(requests))
        for m in range(copies):
            requests.append(LossRequest(full, P, L, _cond_noise(bank, seed_i, L, m)))
            requests.append(LossRequest(response, 1, len(response), _direct_noise(bank, seed_i, L, m, P, bos)))
    losses = token_losses(model, requests, token_budget=token_budget)
    offset = 0 if bos else 1
    out = []
    for entry in layout:
        if isinstance(entry, str):
            out.append(NoisyScores(np.full(copies, np.nan), [], entry))
            continue
        ifds, ds = np.empty(copies), []
        for m in range(copies):
            cond, direct = losses[entry + 2 * m], losses[entry + 2 * m + 1]
            ifds[m] = np.exp(mean_or_nan(cond)) / np.exp(mean_or_nan(direct))
            ds.append((cond[offset:] - direct).astype(np.float32))
        out.append(NoisyScores(ifds, ds, None))
    return out


def _cond_noise(bank, seed, length, m):
    return lambda device, dtype: bank.get(seed, length, device, dtype)[m]


def _direct_noise(bank, seed, length, m, start, bos):
    def offset(device, dtype):
        noise = bank.get(seed, length, device, dtype)[m, start:]
        return torch.cat([torch.zeros((1, noise.shape[1]), device=device, dtype=dtype), noise]) if bos else noise

    return offset


# --------------------------------------------------------------------------- statistics


@dataclass
class TshirtStats:
    tau: float
    avg_noisy_ifd: np.ndarray
    std_noisy_ifd: np.ndarray
    avg_noisy_sifd: np.ndarray
    std_noisy_sifd: np.ndarray
    selected_tokens: np.ndarray  # tokens kept per sample, summed over copies


def percentile(values: np.ndarray, q: float) -> float:
    """numpy's linear percentile, as over the float64 values, in float32 memory: the two order
    statistics around the virtual index, then numpy's own interpolation between them."""
    if values.size == 0 or np.isnan(values).any():
        return float("nan")
    position = (values.size - 1) * q / 100
    lo = int(np.floor(position))
    hi = min(lo + 1, values.size - 1)
    part = np.partition(values, [lo, hi])
    pair = np.array([part[lo], part[hi]], dtype=np.float64)
    return float(np.percentile(pair, (position - lo) * 100))


def tshirt_statistics(noisy_ifds: list[np.ndarray], noisy_d: list[list[np.ndarray]], ratio: float = 0.5) -> TshirtStats:
    """compute_stat.py over all samples: the global threshold and each sample's neighbourhood stats."""
    pooled = [d for copies in noisy_d for d in copies]
    flat = np.abs(np.concatenate(pooled).astype(np.float32, copy=False)) if pooled and sum(map(len, pooled)) else np.zeros(0, np.float32)
    tau = percentile(flat, (1 - ratio) * 100)
    n = len(noisy_ifds)
    avg_ifd, std_ifd = np.empty(n), np.empty(n)
    avg_sifd, std_sifd, kept = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=np.int64)
    for i in range(n):
        values = np.asarray(noisy_ifds[i], dtype=np.float64)
        avg_ifd[i] = np.mean(values) if values.size else np.nan
        std_ifd[i] = np.std(values) if values.size else np.nan
        if not noisy_d[i]:
            continue
        # torch float32, as the reference, so that ties in the std ranking come out the same.
        d = torch.as_tensor(np.stack(noisy_d[i]), dtype=torch.float32)
        mask = d.abs() > tau
        sifd = torch.exp((d * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1))
        avg_sifd[i] = sifd.mean().item()
        std_sifd[i] = sifd.std(unbiased=False).item()
        kept[i] = int(mask.sum())
    return TshirtStats(tau, avg_ifd, std_ifd, avg_sifd, std_sifd, kept)


# --------------------------------------------------------------------------- selection


def hierarchical_top_k(avg_noisy_ifd, avg_sifd, std_sifd, k: int, pool_factor: int = 2) -> list[int]:
    """tshirt_select.py::hierarchical_get_top_k_indices, including its tie rules (k = 0 -> [])."""
    if k <= 0:
        return []
    heap: list[tuple[float, int]] = []
    for idx, (a_ifd, a_sifd) in enumerate(zip(avg_noisy_ifd, avg_sifd)):
        if np.isnan(a_ifd) or np.isnan(a_sifd) or a_ifd >= 1:
            continue
        if len(heap) < pool_factor * k:
            heapq.heappush(heap, (float(a_sifd), idx))
        elif a_sifd > heap[0][0]:
            heapq.heapreplace(heap, (float(a_sifd), idx))
    candidates = [(float(std_sifd[idx]), idx) for _, idx in heap if not np.isnan(std_sifd[idx])]
    return [idx for _, idx in heapq.nsmallest(k, candidates, key=lambda t: t[0])]


def top_k(values, k: int, below_one: bool = False) -> list[int]:
    """tshirt_select.py::get_top_k_indices: the k largest (value, index), NaN dropped; with
    `below_one` (the plain IFD baseline) only values < 1 count. Ties: the larger index first."""
    valid = [(float(v), i) for i, v in enumerate(values) if not np.isnan(v) and (not below_one or v < 1)]
    return [i for _, i in heapq.nlargest(k, valid)]


# --------------------------------------------------------------------------- plugins


class TshirtSettings(Settings):
    max_length: int = Field(1024, description="ifd and tshirt truncation length (Superfiltering, T-SHIRT: 1024).")
    tshirt_copies: int = Field(30, description="Noisy neighbours per row (T-SHIRT uses 30).")
    tshirt_alpha: float = Field(5.0, description="Noise scale alpha (T-SHIRT: 5).")
    seed: int = Field(42, description="Seed of the T-SHIRT noise (combined with each row_id).")


def compute(rows: pl.DataFrame, s: TshirtSettings, scorer) -> pl.DataFrame:
    tokenizer, model = scorer.load()
    r = noisy_scores(model, tokenizer, samples_of(rows), rows["row_id"].to_list(), copies=s.tshirt_copies, alpha=s.tshirt_alpha, seed=s.seed,
                     max_length=s.max_length, token_budget=scorer.token_budget)
    return pl.DataFrame({
        "row_id": rows["row_id"],
        "noisy_ifd": [x.noisy_ifd.tolist() for x in r],
        "noisy_d": [[d.tolist() for d in x.noisy_d] for x in r],
        "avg_noisy_ifd": [float(np.mean(x.noisy_ifd)) for x in r],
        "std_noisy_ifd": [float(np.std(x.noisy_ifd)) for x in r],
        "tshirt_note": [x.error for x in r],
    }, schema=TSHIRT_SCORE.schema())


TSHIRT_SCORE = ScoreMethod(
    name="tshirt",
    description="T-SHIRT noisy neighbours: IFD and per-token differences under embedding noise",
    settings=TshirtSettings,
    version=VERSION,
    columns={
        "noisy_ifd": Column(pl.List(pl.Float64), "IFD of each noisy copy."),
        "noisy_d": Column(pl.List(pl.List(pl.Float32)), "Per-token differences l^c_t - l^u_t of each noisy copy."),
        "avg_noisy_ifd": Column(pl.Float64, "Mean IFD over the noisy copies."),
        "std_noisy_ifd": Column(pl.Float64, "Standard deviation of the noisy copies' IFD."),
        "tshirt_note": Column(pl.String, "Why a row has no T-SHIRT score."),
    },
    compute=compute,
    offers=("avg_noisy_ifd",),
    histograms={"avg_noisy_ifd": "T-SHIRT mean noisy IFD"},
    notes=("tshirt_note",),
    heavy=("noisy_d",),
)


class TshirtStrategySettings(Settings):
    tshirt_ratio: float = Field(0.5, description="Share of tokens kept by the global threshold (k).")
    tshirt_pool_factor: int = Field(2, description="The quality stage keeps this x budget rows.")


def pick(c: Candidates, budget: Budget, s: TshirtStrategySettings) -> Picked:
    if "noisy_d" not in c.rows.columns:
        raise ValueError("the tshirt strategy needs instance_scores with the tshirt method")
    k = budget.rows
    noisy_ifd = [np.asarray(v if v is not None else [], dtype=np.float64) for v in c.rows["noisy_ifd"].to_list()]
    noisy_d = [[np.asarray(d, dtype=np.float32) for d in (v or [])] for v in c.rows["noisy_d"].to_list()]
    stats = tshirt_statistics(noisy_ifd, noisy_d, s.tshirt_ratio)
    picked = hierarchical_top_k(stats.avg_noisy_ifd, stats.avg_noisy_sifd, stats.std_noisy_sifd, k, s.tshirt_pool_factor)
    gain = empty_gain(c.n)
    gain[picked] = stats.std_noisy_sifd[picked]
    pool = set(hierarchical_top_k(stats.avg_noisy_ifd, stats.avg_noisy_sifd, stats.std_noisy_sifd, s.tshirt_pool_factor * k, 1))
    reason, ineligible = {}, set()
    chosen = set(picked)
    for i in range(c.n):
        if i in chosen:
            continue
        if np.isnan(stats.avg_noisy_ifd[i]) or np.isnan(stats.avg_noisy_sifd[i]):
            reason[i] = "no T-SHIRT score (empty, one-token or over-long row)"
            ineligible.add(i)
        elif stats.avg_noisy_ifd[i] >= 1:
            reason[i] = f"mean noisy IFD {stats.avg_noisy_ifd[i]:.4g} >= 1"
            ineligible.add(i)
        elif i not in pool:
            reason[i] = f"mean S-IFD {stats.avg_noisy_sifd[i]:.4g} not in the top {s.tshirt_pool_factor}K"
        else:
            reason[i] = f"S-IFD std {stats.std_noisy_sifd[i]:.4g} not among the K smallest"
    extra = {"avg_noisy_sifd": stats.avg_noisy_sifd, "std_noisy_sifd": stats.std_noisy_sifd, "tshirt_tau": np.full(c.n, stats.tau)}
    return Picked(picked, gain, "S-IFD std over neighbours", reason, ineligible, extra=extra)


TSHIRT = Strategy(
    name="tshirt",
    description="T-SHIRT hierarchical top-k: the pool_factor x K highest mean S-IFD, then the K steadiest over neighbours.",
    settings=TshirtStrategySettings,
    version=VERSION,
    pick=pick,
    fills=frozenset({"gain", "eligible", "scores"}),
    reports={"avg_noisy_sifd": "Mean S-IFD over the noisy neighbours.", "std_noisy_sifd": "S-IFD standard deviation over the neighbours."},
    reads=("noisy_d",),
)
