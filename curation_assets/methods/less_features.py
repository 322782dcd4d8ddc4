"""LESS gradient features (research/targeted.md §3.1-3.2): per-sample LoRA gradients of rows encoded
with assistant-only loss masks (§2), Adam preconditioning, TRAK's Rademacher projection, L2 norm.

Per-sample gradients are vectorized: torch.func `vmap(grad(loss))` over length-sorted, right-padded
batches with the LoRA parameters as the differentiated inputs. Right padding needs no attention
mask under a causal model (real tokens never attend to later positions), so each row's gradient is
exactly its batch-size-1 gradient. The reference's per-sample loop (`reference_loop_gradients`) is
kept only to check and benchmark this path against; the assets never call it.

Reference behaviour kept: the loss is the mean token cross-entropy over one row's unmasked shifted
labels (HF `model(**batch).loss`); gradients are concatenated in `model.named_parameters()` order;
Adam's transform has no bias correction and eps inside the sqrt; the projector is TRAK's
BasicProjector (blocks of 128 columns, block i seeded seed + 1000 i + 100000 model_id, Bernoulli(0.5)
* 2 - 1, no 1/sqrt(d) scaling), reproduced draw for draw; rows are L2-normalized with eps 1e-12.
Deviations (notes' PROPOSALs): gradients are taken in eval mode by default (LESS; TIS runs with LoRA
dropout on: `dropout=True`); the projection runs in fp32 (TIS: the model's bf16).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Rows are encoded by the shared training module (open-instruct's tulu format and masks, §2), so the
# warm-up trains on exactly the tokens whose gradients are taken here.
from curation_assets.methods.lora_training import IGNORE, Encoded

VERSION = "less-1"
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
PROJ_BLOCK, PROJ_SEED_STEP, PROJ_MODEL_STEP = 128, 1000, 100000


def scored_tokens(row: Encoded) -> int:
    """Label tokens under the shifted loss (a label on the first position is never predicted)."""
    return sum(1 for x in row.labels[1:] if x != IGNORE)


# --------------------------------------------------------------------------- per-sample gradients


def lora_parameter_names(model) -> list[str]:
    """The LoRA parameters, in model.named_parameters() order (the reference's concatenation order).
    As the reference asserts, nothing else may require a gradient."""
    names = []
    for name, p in model.named_parameters():
        if "lora" in name.lower():
            names.append(name)
        elif p.requires_grad:
            raise ValueError(f"parameter {name} requires a gradient but is not a LoRA parameter")
    if not names:
        raise ValueError("the model has no LoRA parameters: load the warm-up adapter first")
    return names


def length_batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Row positions in batches of similar length (longest first), each padded batch holding at most
    max_tokens tokens and max_rows rows."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, current = [], []
    for i in order:
        # longest first: a batch's first row sets its padded width
        if current and ((len(current) + 1) * lengths[current[0]] > max_tokens or len(current) >= max_rows):
            batches.append(np.array(current))
            current = []
        current.append(int(i))
    if current:
        batches.append(np.array(current))
    return batches


class PerSampleGradients:
    """vmap(grad(row loss)) over the LoRA parameters of a peft model; rows in, (B, P) gradients out."""

    def __init__(self, model, dropout: bool = False):
        from torch.func import functional_call, grad, vmap

        self.model = model
        self.names = lora_parameter_names(model)
        named = dict(model.named_parameters())
        self.params = {n: named[n].detach() for n in self.names}
        self.dim = sum(p.numel() for p in self.params.values())
        self.dropout = dropout
        self.device = next(iter(self.params.values())).device

        def row_loss(params, ids, labels):
            logits = functional_call(model, params, (ids.unsqueeze(0),)).logits[0, :-1]
            return F.cross_entropy(logits.float(), labels[1:], ignore_index=-100)

        self._grads = vmap(grad(row_loss), in_dims=(None, 0, 0), randomness="different" if dropout else "error")

    def __call__(self, rows: Sequence[Encoded], pad_id: int) -> torch.Tensor:
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r.input_ids)] = torch.tensor(r.input_ids)
            labels[b, : len(r.labels)] = torch.tensor(r.labels)
        self.model.train(self.dropout)
        grads = self._grads(self.params, ids.to(self.device), labels.to(self.device))
        return torch.cat([grads[n].reshape(len(rows), -1).float() for n in self.names], dim=1)


def reference_loop_gradients(model, rows: Sequence[Encoded]) -> torch.Tensor:
    """LESS's collect_grads loop (batch size 1, loss.backward(), p.grad concatenated): the baseline
    the vectorized path is checked and benchmarked against. Not used by the assets."""
    names = lora_parameter_names(model)
    named = dict(model.named_parameters())
    for n in names:
        named[n].requires_grad_(True)
    device = named[names[0]].device
    out = []
    for r in rows:
        model.zero_grad()
        batch = {"input_ids": torch.tensor([r.input_ids], device=device), "labels": torch.tensor([r.labels], device=device)}
        model(**batch).loss.backward()
        out.append(torch.cat([named[n].grad.reshape(-1).float() for n in names]))
    model.zero_grad()
    return torch.stack(out)


def adam_precondition(g: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                      beta1: float = ADAM_BETA1, beta2: float = ADAM_BETA2, eps: float = ADAM_EPS) -> torch.Tensor:
    """obtain_gradients_with_adam: one more Adam step's update direction for g, from the checkpoint's
    moments: m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2, m' / sqrt(v' + eps); no bias correction."""
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g**2
    return m / torch.sqrt(v + eps)


def flat_moments(moments: dict[str, tuple[torch.Tensor, torch.Tensor]], names: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """The Adam moments (exp_avg, exp_avg_sq) of each LoRA parameter, concatenated in `names` order
    (LESS keys them by parameter name; prepare_optimizer_state)."""
    missing = [n for n in names if n not in moments]
    if missing:
        raise ValueError(f"the optimizer state lacks {len(missing)} LoRA parameters, e.g. {missing[0]}")
    m = torch.cat([moments[n][0].reshape(-1).float() for n in names]).to(device)
    v = torch.cat([moments[n][1].reshape(-1).float() for n in names]).to(device)
    return m, v


# --------------------------------------------------------------------------- projection


class RademacherProjector:
    """TRAK's BasicProjector, draw for draw: column block i (block_size wide) is a (grad_dim x
    block_size) matrix of +-1 from a torch.Generator seeded seed + 1000 i + 100000 model_id,
    filled by bernoulli_(0.5) in row-major order. On a CPU the block is drawn in row chunks (the
    CPU generator continues the same stream, so the entries are identical) to bound memory; the
    whole matrix is kept after its first use when it fits in `cache_bytes`, so it is drawn once.
    Outputs equal BasicProjector's up to float summation order."""

    def __init__(self, grad_dim: int, proj_dim: int = 8192, seed: int = 0, *, block_size: int = PROJ_BLOCK, model_id: int = 0,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", chunk_rows: int = 1 << 20, cache_bytes: int = 1 << 30):
        self.grad_dim, self.proj_dim, self.seed, self.model_id = grad_dim, proj_dim, seed, model_id
        self.block_size = min(proj_dim, block_size)
        self.num_blocks = math.ceil(proj_dim / self.block_size)
        self.dtype, self.device = dtype, torch.device(device)
        self.chunk_rows = chunk_rows if self.device.type == "cpu" else grad_dim  # CUDA: one draw per block, as TRAK
        fits = grad_dim * self.num_blocks * self.block_size * torch.finfo(dtype).bits // 8 <= cache_bytes
        self._cache: list[list[torch.Tensor]] | None = [] if fits else None

    def block_seed(self, block: int) -> int:
        return self.seed + PROJ_SEED_STEP * block + PROJ_MODEL_STEP * self.model_id

    def _draw(self, block: int) -> Iterator[tuple[int, torch.Tensor]]:
        gen = torch.Generator(device=self.device).manual_seed(self.block_seed(block))
        for start in range(0, self.grad_dim, self.chunk_rows):
            rows = min(self.chunk_rows, self.grad_dim - start)
            chunk = torch.empty(rows, self.block_size, dtype=self.dtype, device=self.device).bernoulli_(0.5, generator=gen)
            yield start, chunk.mul_(2.0).sub_(1.0)

    def _blocks(self, block: int) -> Iterator[tuple[int, torch.Tensor]]:
        if self._cache is None:
            yield from self._draw(block)
            return
        if len(self._cache) <= block:
            self._cache.append(list(self._draw(block)))
        yield from self._cache[block]

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        if grads.shape[1] != self.grad_dim:
            raise ValueError(f"gradients have {grads.shape[1]} dims, the projector {self.grad_dim}")
        g = grads.to(device=self.device, dtype=self.dtype)
        out = torch.zeros(len(g), self.proj_dim, dtype=self.dtype, device=self.device)
        for b in range(self.num_blocks):
            st, ed = b * self.block_size, min((b + 1) * self.block_size, self.proj_dim)
            for start, chunk in self._blocks(b):
                out[:, st:ed] += g[:, start:start + len(chunk)] @ chunk[:, : ed - st]
        return out


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return F.normalize(x, p=2, dim=1, eps=eps)


# --------------------------------------------------------------------------- the pipeline


def gradient_features(model, rows: Sequence[Encoded], projector: RademacherProjector, *, pad_id: int,
                      moments: tuple[torch.Tensor, torch.Tensor] | None = None, dropout: bool = False,
                      max_tokens: int = 4096, max_rows: int = 64, buffer_rows: int = 256,
                      log=lambda _: None) -> np.ndarray:
    """Normalized projected features, one row per input row (float32, rows in input order).
    `moments` = the checkpoint's flat Adam (exp_avg, exp_avg_sq) for pool rows; None for query rows
    (plain SGD gradients). Full gradients are buffered up to buffer_rows before each projection so
    the random matrix is drawn (or read from its cache) once per buffer, not per batch."""
    if not rows:
        return np.zeros((0, projector.proj_dim), dtype=np.float32)
    empty = [i for i, r in enumerate(rows) if scored_tokens(r) == 0]
    if empty:
        raise ValueError(f"{len(empty)} rows have no scored token (all labels masked), e.g. row {empty[0]}")
    fn = PerSampleGradients(model, dropout=dropout)
    if fn.dim != projector.grad_dim:
        raise ValueError(f"the adapter has {fn.dim} LoRA dims, the projector expects {projector.grad_dim}")
    out = np.empty((len(rows), projector.proj_dim), dtype=np.float32)
    # the gradient buffer holds at most buffer_rows full gradients: batches never exceed it
    batches = length_batches([len(r.input_ids) for r in rows], max_tokens, min(max_rows, buffer_rows))
    buffer, positions, done = [], [], 0

    def flush():
        nonlocal buffer, positions, done
        if not buffer:
            return
        projected = normalize_rows(projector.project(torch.cat(buffer)).float())
        idx = np.concatenate(positions)
        out[idx] = projected.cpu().numpy()
        done += len(idx)
        log(f"gradient features: {done}/{len(rows)} rows")
        buffer, positions = [], []

    for batch in batches:
        g = fn([rows[i] for i in batch], pad_id)
        if moments is not None:
            g = adam_precondition(g, moments[0], moments[1])
        if sum(len(p) for p in positions) + len(batch) > buffer_rows:
            flush()
        buffer.append(g)
        positions.append(batch)
    flush()
    return out
