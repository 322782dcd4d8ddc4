"""IFD and T-SHIRT scoring: ours against the reference approach, side by side, same model and data.

The reference approach is reimplemented here as the reference scripts run it (not their code):
- Superfiltering IFD: one row at a time, two forward passes (response alone; prompt + response with
  the prompt masked), full logits and the Hugging Face loss, fp32 or bf16 as chosen.
- T-SHIRT: one row at a time, a batch of 32 embedding rows (clean + 31 noisy) for the conditional
  pass and 32 for the direct pass, full logits upcast to float32, per-token cross-entropy.
Ours: `plain_ifd` and `noisy_scores` (length-sorted batches by token budget, LM head only on scored
positions, inference mode).

Data: real Alpaca rows (../shared/data/raw/alpagasus/random_9k.json) cycled to --rows. Model: a
random-weight GPT-2 (124M, `--size gpt2`) or a small one (`--size small`, 4 layers x 256) with a
byte-level BPE trained on the pool, as in research/anchor-bench.md; only speeds are meaningful.
Reported: samples/s and tokens/s for each, the ratio, peak memory, and on CUDA the share of the
GPU's bf16 dense peak that the forward FLOPs (2 x parameters x tokens) represent.

    python benchmarks/bench_scores.py --device cpu --size small --rows 400
    python benchmarks/bench_scores.py --device cuda --dtype bfloat16 --rows 52002 --ref-rows 2000
"""

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "raw"
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def build(size: str, device: str, dtype: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    rows = json.loads((SHARED / "alpagasus" / "random_9k.json").read_text())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows],
                            trainers.BpeTrainer(vocab_size=50257, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", model_max_length=1024)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer)) if size == "gpt2" else GPT2Config(vocab_size=len(tokenizer), n_embd=256, n_layer=4, n_head=4)
    model = GPT2LMHeadModel(config).to(device=device, dtype=getattr(torch, dtype)).eval()
    return rows, tokenizer, model


def reference_ifd(model, tokenizer, rows, device):
    """Superfiltering's loop: batch 1, HF loss with labels (see module docstring)."""
    with torch.no_grad():
        for r in rows:
            prompt = r["instruction"] + "\n" + (r["input"] + "\n" if r["input"] else "")
            p = tokenizer.encode(prompt, truncation=True, max_length=1024)
            direct = torch.tensor([tokenizer.encode(r["output"], truncation=True, max_length=1024 - len(p) + 1)], device=device)
            model(direct, labels=direct).loss.item()
            whole = torch.tensor([tokenizer.encode(prompt + r["output"], truncation=True, max_length=1024)], device=device)
            labels = whole.clone()
            labels[0, : len(tokenizer.encode(prompt))] = -100
            model(whole, labels=labels).loss.item()


def reference_tshirt(model, tokenizer, rows, device, copies=31, alpha=5.0):
    """T-SHIRT's loop: per row, 32-row embedding batches for both passes, full float32 logits."""
    wte = model.get_input_embeddings()
    ce = torch.nn.CrossEntropyLoss(reduction="none")
    with torch.inference_mode():
        for r in rows:
            prompt = r["instruction"] + "\n" + (r["input"] + "\n" if r["input"] else "")
            full = torch.tensor([tokenizer.encode(prompt + r["output"], truncation=True, max_length=1024)], device=device)
            P = len(tokenizer.encode(prompt))
            resp = torch.tensor([tokenizer.encode(r["output"], truncation=True, max_length=max(1024 - P, 1))], device=device)
            L, C = full.shape[1], wte.embedding_dim
            noise = torch.cat([torch.zeros((1, L, C), dtype=wte.weight.dtype, device=device),
                               torch.empty((copies, L, C), dtype=wte.weight.dtype, device=device).uniform_(-1, 1)]) * alpha / math.sqrt(L * C)
            for ids, add in ((full, noise), (resp, noise[:, P : P + resp.shape[1]])):
                if add.shape[1] != ids.shape[1]:
                    continue
                logits = model(inputs_embeds=wte(ids) + add).logits[:, :-1].float()
                ce(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].expand(logits.shape[0], -1).reshape(-1))


def ours_ifd(model, tokenizer, rows, budget):
    from curation_assets.methods.ifd import Sample, plain_ifd

    plain_ifd(model, tokenizer, [Sample(r["instruction"], r["input"], r["output"]) for r in rows], token_budget=budget)


def ours_tshirt(model, tokenizer, rows, budget):
    from curation_assets.methods.ifd import Sample, plain_ifd
    from curation_assets.methods.tshirt import noisy_scores

    samples = [Sample(r["instruction"], r["input"], r["output"]) for r in rows]
    plain_ifd(model, tokenizer, samples, token_budget=budget)  # the clean row
    noisy_scores(model, tokenizer, samples, [str(i) for i in range(len(samples))], copies=30, token_budget=budget)


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--size", default="gpt2", choices=["gpt2", "small"])
    parser.add_argument("--rows", type=int, default=2000, help="rows scored by ours")
    parser.add_argument("--ref-rows", type=int, default=None, help="rows timed for the reference loops (default: --rows)")
    parser.add_argument("--tshirt-rows", type=int, default=None, help="rows for T-SHIRT (default: --rows // 4)")
    parser.add_argument("--budget", type=int, default=None, help="our token budget per batch (default: the device's)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs {SHARED}")
    if args.device == "cpu":
        torch.backends.mkldnn.enabled = True
    pool, tokenizer, model = build(args.size, args.device, args.dtype)
    rows = [pool[i % len(pool)] for i in range(args.rows)]
    ref_rows = rows[: args.ref_rows or args.rows]
    ts_rows = rows[: args.tshirt_rows or max(args.rows // 4, 1)]
    tokens = lambda rs: sum(len(tokenizer.encode(r["instruction"] + "\n" + r["input"] + "\n" + r["output"])) for r in rs)  # noqa: E731
    params = sum(p.numel() for p in model.parameters())
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model: GPT-2 {args.size} ({params / 1e6:.1f}M params, random weights), {args.dtype}, on {gpu}")
    print(f"rows: {len(rows):,} ours, {len(ref_rows):,} reference; {tokens(rows[:2000]) / min(len(rows), 2000):.1f} tokens per row\n")

    ours_ifd(model, tokenizer, rows[:64], args.budget)  # warm-up (kernels, allocator)
    reference_ifd(model, tokenizer, ref_rows[:16], args.device)
    results = {}
    for name, fn, n_rows, passes in [
        ("IFD reference loop", lambda: reference_ifd(model, tokenizer, ref_rows, args.device), ref_rows, 2),
        ("IFD ours (batched)", lambda: ours_ifd(model, tokenizer, rows, args.budget), rows, 2),
        ("T-SHIRT reference loop", lambda: reference_tshirt(model, tokenizer, ts_rows[: max(len(ts_rows) // 4, 1)], args.device), ts_rows[: max(len(ts_rows) // 4, 1)], 64),
        ("T-SHIRT ours (batched)", lambda: ours_tshirt(model, tokenizer, ts_rows, args.budget), ts_rows, 62),
    ]:
        seconds, peak = timed(fn, args.device)
        n_tokens = tokens(n_rows)
        results[name] = len(n_rows) / seconds
        line = f"{name:<26}{len(n_rows):>8,} rows {seconds:>8.1f} s {len(n_rows) / seconds:>9.1f} samples/s {n_tokens / seconds:>11,.0f} tokens/s  peak {peak:6.2f} GiB"
        if args.device.startswith("cuda"):
            peak_tflops = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in gpu), None)
            if peak_tflops:
                line += f"  {100 * 2 * params * n_tokens * passes / seconds / (peak_tflops * 1e12):.2f}% of bf16 peak"
        print(line)
    print(f"\nratio IFD: {results['IFD ours (batched)'] / results['IFD reference loop']:.1f}x   "
          f"ratio T-SHIRT: {results['T-SHIRT ours (batched)'] / results['T-SHIRT reference loop']:.1f}x")
    if args.rows >= 52002:
        print(f"52,002 rows of IFD: {52002 / results['IFD ours (batched)']:.1f} s")


if __name__ == "__main__":
    main()
