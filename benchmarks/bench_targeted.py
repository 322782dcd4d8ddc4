"""Targeted selection, side by side in one run (research/anchor-bench.md for the H100 reference figures):

1. LESS gradient features: ours (torch.func vmap over the LoRA parameters, length-sorted batches,
   one projection per buffer) against LESS's collect_grads approach (batch size 1, loss.backward(),
   TRAK BasicProjector every 16 rows), same model, adapter, Adam state and projection seed; prints
   samples/s of both, the ratio and the features' cosine.
2. Selection over N candidates x M queries (default 1,000,000 x 1,000) with faiss, the pool in
   fp16 on disk (memory-mapped), read in chunks: time and peak memory of each TIS algorithm; then
   the reference layout (the whole S in memory, as TIS's sim_subset.py) when it fits, with the
   ratio and whether both pick the same rows.

    python benchmarks/bench_targeted.py gradients [--rows 64] [--device cuda]
    python benchmarks/bench_targeted.py selection [--pool 1000000 --queries 1000 --dim 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def texts(n: int) -> list[list[dict]]:
    raw = ROOT.parent / "shared" / "data" / "raw" / "alpagasus" / "random_9k.json"
    if raw.exists():
        rows = json.loads(raw.read_text())[:n]
        return [[{"role": "user", "content": (r["instruction"] + "\n" + r["input"]).strip()}, {"role": "assistant", "content": r["output"]}] for r in rows]
    rng = np.random.default_rng(0)
    words = "the a model data river number write list explain code python function sum value sea city".split()
    return [[{"role": "user", "content": " ".join(rng.choice(words, 20))}, {"role": "assistant", "content": " ".join(rng.choice(words, 60))}] for _ in range(n)]


def bench_gradients(args) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trak.projectors import BasicProjector, ProjectionType

    from curation_assets.methods import less_features as less
    from curation_assets.methods.lora_training import encode_conversation

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tiny_llama")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=max(1, args.hidden // 64), num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=2048)
    cfg._attn_implementation = "eager"  # vmap batches eager attention; fused SDPA falls back to a per-row loop
    model = LlamaForCausalLM(cfg).to(args.device).eval()
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=4 * args.rank, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    rows = [encode_conversation(tok, c, args.max_length) for c in texts(args.rows)]
    rows = [r for r in rows if less.scored_tokens(r) > 0]
    names = less.lora_parameter_names(model)
    named = dict(model.named_parameters())
    dim = sum(named[n].numel() for n in names)
    g = torch.Generator().manual_seed(1)
    moments = {n: (1e-3 * torch.randn(named[n].shape, generator=g), 1e-6 * torch.rand(named[n].shape, generator=g)) for n in names}
    flat = less.flat_moments(moments, names, args.device)
    tokens = sum(len(r.input_ids) for r in rows)
    print(f"model: Llama-style {args.layers}x{args.hidden}, LoRA r {args.rank} on q/k/v/o = {dim:,} params; {len(rows)} rows, {tokens / len(rows):.1f} tokens/row; "
          f"projection to {args.proj_dim}; device {args.device}; torch {torch.__version__}, {os.cpu_count()} CPUs")

    # the reference approach: batch size 1, backward, Adam transform, BasicProjector every 16 rows
    proj = BasicProjector(grad_dim=dim, proj_dim=args.proj_dim, seed=0, proj_type=ProjectionType.rademacher, device=args.device,
                          dtype=torch.float32, block_size=128, max_batch_size=16)
    start = time.perf_counter()
    ref, buffer = [], []
    for i in range(len(rows)):
        grads = less.reference_loop_gradients(model, rows[i:i + 1])
        buffer.append(less.adam_precondition(grads, *flat))
        if len(buffer) == 16 or i == len(rows) - 1:
            ref.append(proj.project(torch.cat(buffer), model_id=0))
            buffer = []
    ref_s = time.perf_counter() - start
    reference = less.normalize_rows(torch.cat(ref)).cpu().numpy()
    for p in model.parameters():
        p.requires_grad_(False)

    start = time.perf_counter()
    ours = less.gradient_features(model, rows, less.RademacherProjector(dim, args.proj_dim, seed=0, device=args.device), pad_id=0, moments=flat,
                                  max_tokens=args.max_tokens, max_rows=args.max_rows, buffer_rows=args.buffer_rows)
    ours_s = time.perf_counter() - start
    cos = (ours * reference).sum(axis=1)
    print(f"reference loop (bs 1 + BasicProjector/16): {len(rows) / ref_s:8.2f} samples/s  ({ref_s:.1f} s)")
    print(f"ours (vmap, batched, one projection/buffer): {len(rows) / ours_s:8.2f} samples/s  ({ours_s:.1f} s)")
    print(f"ratio ours / reference: {ref_s / ours_s:.2f}x; feature cosine min {cos.min():.6f}, mean {cos.mean():.6f}; peak RSS {peak_rss_gib():.2f} GiB")


def bench_selection(args) -> None:
    from curation_assets.methods import tis_selection as tis
    from curation_assets.methods.similarity_search import DenseSimilarity, FaissSimilarity, array_chunks

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "pool.npy"
        pool = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(args.pool, args.dim))
        start = time.perf_counter()
        for s in range(0, args.pool, 100_000):  # random unit vectors, written in blocks
            block = rng.standard_normal((min(100_000, args.pool - s), args.dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            pool[s:s + len(block)] = block
        pool.flush()
        del pool
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        print(f"pool {args.pool:,} x {args.dim} fp16 on disk ({path.stat().st_size / 2**30:.2f} GiB, written in {time.perf_counter() - start:.1f} s), "
              f"{args.queries:,} queries, budget {args.budget:,}; faiss on {os.cpu_count()} CPUs")
        features = np.load(path, mmap_mode="r")
        source = FaissSimilarity(queries, array_chunks(features, rows=args.chunk), args.pool)
        base = peak_rss_gib()
        runs = [("round_robin", lambda: tis.round_robin(source, args.budget)), ("doubly_greedy", lambda: tis.doubly_greedy(source, args.budget)),
                ("uot (top 2000 per query)", lambda: tis.uot(source, args.budget, candidates_per_query=2000)),
                ("knn_uniform (L 5000)", lambda: tis.knn_uniform(source, args.budget))]
        if args.kde:
            runs.append(("knn_kde", lambda: tis.knn_kde(source, tis.weighted_neighbour_sims([features], [1.0]), args.budget)))
        timings, orders = {}, {}
        for name, fn in runs:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = fn()
            timings[name], orders[name] = time.perf_counter() - start, np.asarray(result.order)
            print(f"{name:<26} {timings[name]:8.1f} s   picked {len(result.order):,}   peak RSS {peak_rss_gib():.2f} GiB (before: {base:.2f})", flush=True)
        dense_gib = args.pool * args.queries * 4 / 2**30
        print(f"a dense S would take {dense_gib:.1f} GiB in float32; the first search filled the top lists that later algorithms slice")
        if dense_gib > args.dense_limit_gib:
            print(f"reference layout (dense S in memory) skipped: {dense_gib:.1f} GiB > --dense-limit-gib {args.dense_limit_gib}")
            return
        # The reference layout (TIS sim_subset.py): the whole S = Q X^T in memory, then the same algorithms.
        start = time.perf_counter()
        dense = np.empty((args.queries, args.pool), dtype=np.float32)
        for s0 in range(0, args.pool, args.chunk):
            dense[:, s0:s0 + args.chunk] = queries @ features[s0:s0 + args.chunk].astype(np.float32).T
        build = time.perf_counter() - start
        reference = DenseSimilarity(dense)
        print(f"reference layout: dense S built in {build:.1f} s, peak RSS {peak_rss_gib():.2f} GiB")
        dense_runs = [("round_robin", lambda: tis.round_robin(reference, args.budget)), ("doubly_greedy", lambda: tis.doubly_greedy(reference, args.budget)),
                      ("knn_uniform (L 5000)", lambda: tis.knn_uniform(reference, args.budget))]
        for name, fn in dense_runs:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = fn()
            seconds = time.perf_counter() - start
            ours = timings[name]
            print(f"{name:<26} dense {seconds + build:8.1f} s (S {build:.1f} s + {seconds:.1f} s)   ours {ours:8.1f} s   ratio dense/ours {(seconds + build) / ours:6.2f}x   "
                  f"same picks: {np.array_equal(result.order, orders[name])} (same set: {len(set(result.order.tolist()) & set(orders[name].tolist())) / max(len(result.order), 1):.4f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gradients")
    g.add_argument("--rows", type=int, default=64)
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--rank", type=int, default=128)
    g.add_argument("--proj-dim", type=int, default=8192)
    g.add_argument("--max-length", type=int, default=512)
    g.add_argument("--max-tokens", type=int, default=4096)
    g.add_argument("--max-rows", type=int, default=32)
    g.add_argument("--buffer-rows", type=int, default=256)
    g.add_argument("--device", default="cpu")
    s = sub.add_parser("selection")
    s.add_argument("--pool", type=int, default=1_000_000)
    s.add_argument("--queries", type=int, default=1_000)
    s.add_argument("--dim", type=int, default=256)
    s.add_argument("--budget", type=int, default=10_000)
    s.add_argument("--chunk", type=int, default=131_072)
    s.add_argument("--kde", action="store_true", help="also KNN-KDE (heavy: the KDE runs over up to M x 5000 prefetched candidates)")
    s.add_argument("--tmp", default=None)
    s.add_argument("--dense-limit-gib", type=float, default=8.0, help="also time the reference layout (dense S in memory) when it fits")
    args = parser.parse_args()
    bench_gradients(args) if args.what == "gradients" else bench_selection(args)


if __name__ == "__main__":
    main()
