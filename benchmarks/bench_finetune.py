"""LoRA fine-tuning and target-task evaluation speed (subset_model / subset_evaluation).

Training: ours (micro batches of length-grouped rows) against TIS's train_sft.py layout (one row
per forward pass, gradient accumulation to the same effective batch), same rows, same settings.
Evaluation: our batched answer loss (methods/token_losses.py) against one example per forward
pass (TIS ce_loss.py), then lm-eval accuracy (MMLU log-likelihood, GSM8K greedy generation).

    .venv/bin/python benchmarks/bench_finetune.py                         # SmolLM2-135M (GGUF), 300 rows, CPU
    .venv/bin/python benchmarks/bench_finetune.py --model Qwen/Qwen2.5-7B --rows 2600 --device cuda
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation_assets.methods import evaluation, lora_training  # noqa: E402
from curation_assets.subset_training import DEMO_BASE_MODEL, default_eval_data, load_base_model  # noqa: E402


def pool_rows(n: int, seed: int = 0) -> list[list[dict]]:
    """n conversations from ../shared/data (Alpaca random 9k and GSM8K train), else the demo pool's GSM8K file."""
    import gzip

    raw = ROOT.parent / "shared" / "data" / "raw"
    rows = []
    if raw.is_dir():
        for r in json.loads((raw / "alpagasus" / "random_9k.json").read_text())[:2000]:
            rows.append([{"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")}, {"role": "assistant", "content": r["output"]}])
        for line in (raw / "gsm8k" / "train.jsonl").read_text().splitlines()[:2000]:
            d = json.loads(line)
            rows.append([{"role": "user", "content": d["question"]}, {"role": "assistant", "content": d["answer"]}])
    else:
        with gzip.open(ROOT / "demo" / "pool" / "gsm8k_train.jsonl.gz", "rt") as f:
            for line in f:
                d = json.loads(line)
                rows.append([{"role": "user", "content": d["question"]}, {"role": "assistant", "content": d["answer"]}])
    random.Random(seed).shuffle(rows)
    return rows[:n]


def train(model, tokenizer, rows, settings, name) -> lora_training.TrainResult:
    with tempfile.TemporaryDirectory() as tmp:
        result = lora_training.train_lora(model, tokenizer, rows, settings, tmp, model_name=name)
    print(f"  {result.n_rows} rows, {result.train_tokens:,} tokens, {result.seconds:.1f}s: {result.tokens_per_second:,.0f} tokens/s, "
          f"loss {result.losses[0]['loss']:.3f} -> {result.losses[-1]['loss']:.3f}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEMO_BASE_MODEL)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--gsm8k-examples", type=int, default=20)
    ap.add_argument("--skip-reference", action="store_true", help="only ours (the reference layout is slow for big models)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    t = time.perf_counter()
    model, tokenizer = load_base_model(args.model, args.device)
    device = str(next(model.parameters()).device)
    print(f"model {args.model} on {device}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, loaded in {time.perf_counter() - t:.1f}s; "
          f"{torch.get_num_threads()} threads")
    rows = pool_rows(args.rows)
    common = dict(rank=16, alpha=32, dropout=0.05, epochs=1, learning_rate=2e-4, batch_size=args.batch, max_length=args.max_length, seed=0)

    print("training, ours: micro batch", args.micro_batch, "grouped by length")
    ours = train(model, tokenizer, rows, lora_training.LoraSettings(**common, micro_batch_size=args.micro_batch, group_by_length=True), args.model)
    if not args.skip_reference:
        print("training, reference layout (TIS train_sft.py): micro batch 1, gradient accumulation", args.batch)
        ref = train(model, tokenizer, rows, lora_training.LoraSettings(**common, micro_batch_size=1), args.model)
        print(f"  training speed-up: {ours.tokens_per_second / ref.tokens_per_second:.2f}x")

    data = default_eval_data()
    mmlu = evaluation.load_examples(data, "mmlu", args.eval_examples)
    gsm = evaluation.load_examples(data, "gsm8k", args.eval_examples)
    print(f"evaluation data: {data}")
    loss = evaluation.answer_loss(model, tokenizer, gsm + mmlu, "tulu", args.max_length)
    print(f"answer loss, ours (batched): {len(gsm) + len(mmlu)} examples, {loss['loss_seconds']:.1f}s, {loss['loss_tokens_per_second']:,.0f} tokens/s")
    if not args.skip_reference:
        t = time.perf_counter()
        tokens = 0
        with torch.inference_mode():
            for e in gsm + mmlu:
                enc = lora_training.encode_prompt_completion(tokenizer, evaluation.render_prompt(tokenizer, e, "tulu"), e.answer, args.max_length)
                ids = torch.tensor([enc.input_ids], device=device)
                model(input_ids=ids, labels=torch.tensor([enc.labels], device=device)).loss.item()
                tokens += len(enc.input_ids)
        seconds = time.perf_counter() - t
        print(f"answer loss, reference (one example per pass): {seconds:.1f}s, {tokens / seconds:,.0f} tokens/s; "
              f"speed-up {loss['loss_tokens_per_second'] / (tokens / seconds):.2f}x")
    acc = evaluation.accuracy(model, tokenizer, "mmlu", mmlu, "tulu", batch_size=16)
    print(f"lm-eval mmlu ({len(mmlu)} examples, 4 log-likelihoods each): accuracy {acc['accuracy']:.3f} in {acc['accuracy_seconds']:.1f}s")
    few = gsm[: args.gsm8k_examples]
    acc = evaluation.accuracy(model, tokenizer, "gsm8k", few, "tulu", batch_size=16, max_new_tokens=160)
    print(f"lm-eval gsm8k ({len(few)} examples, greedy, <= 160 new tokens): accuracy {acc['accuracy']:.3f} in {acc['accuracy_seconds']:.1f}s")


if __name__ == "__main__":
    main()
