"""Build demo/scorer: a small GPT-2 trained on the demo pool, the demo's weak scorer (the role GPT-2
plays for Superfiltering and T-SHIRT). Deterministic; a couple of minutes on a laptop CPU.

    python demo/build_scorer.py

Real runs point the scorer at a real model instead (e.g. `gpt2`, downloaded once).
"""

import random
import tempfile
from pathlib import Path

import polars as pl
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from curation_assets.methods.ingest import IngestOptions, ingest_file, is_data_file, load_options

HERE = Path(__file__).resolve().parent
# A ChatML-style template so that the IterIT score (which needs one) runs in the demo too.
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def demo_texts() -> list[str]:
    texts = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(sorted(p for p in (HERE / "pool").iterdir() if is_data_file(p))):
            summary = ingest_file(path, load_options(path, IngestOptions()), partition="demo", source_file=path.name, staging_dir=Path(tmp) / str(i))
            for part in summary.pool_parts:
                frame = pl.read_parquet(part)
                texts += [f"{a}\n{b + chr(10) if b else ''}{c}" for a, b, c in frame.select("instruction", "input", "response").iter_rows()]
    return texts


def main() -> None:
    random.seed(0)
    torch.manual_seed(0)
    texts = demo_texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=1024, chat_template=CHAT_TEMPLATE)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=128, n_layer=4, n_head=4))
    eos = tokenizer.eos_token_id
    sequences = [ids[:255] + [eos] for ids in tokenizer(texts).input_ids]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    for epoch in range(12):
        random.shuffle(sequences)
        total = 0.0
        for start in range(0, len(sequences), 16):
            batch = sequences[start : start + 16]
            width = max(map(len, batch))
            ids = torch.tensor([s + [eos] * (width - len(s)) for s in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += loss.item() * len(batch)
        print(f"epoch {epoch}: loss {total / len(sequences):.3f}")
    model.eval()
    out = HERE / "scorer"
    model.to(torch.float16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
