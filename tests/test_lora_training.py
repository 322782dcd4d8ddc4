"""The shared LoRA training module on the tiny random models of tests/fixtures."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from curation_assets.methods.lora_training import (
    ADAPTER_FILE,
    IGNORE,
    LoraSettings,
    adapter_applied,
    encode_conversation,
    encode_prompt_completion,
    load_adam_state,
    train_lora,
)

FIXTURES = Path(__file__).parent / "fixtures"


def load(name):
    return AutoModelForCausalLM.from_pretrained(FIXTURES / name), AutoTokenizer.from_pretrained(FIXTURES / name)


def trained_text(tok, enc):
    return tok.decode([i for i, l in zip(enc.input_ids, enc.labels) if l != IGNORE])


def conversations(n=24):
    return [[{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}] for i in range(n)]


def test_tulu_format_trains_every_assistant_turn_and_its_eos():
    _, tok = load("tiny_gpt2")
    messages = [
        {"role": "system", "content": " Be brief. "},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello! "},
        {"role": "user", "content": "Sum 2 and 2"},
        {"role": "assistant", "content": "4"},
    ]
    enc = encode_conversation(tok, messages, 512)
    eos = tok.eos_token
    assert tok.decode(enc.input_ids) == f"<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!{eos}\n<|user|>\nSum 2 and 2\n<|assistant|>\n4{eos}"
    # open-instruct: the newline after an inner turn's EOS lies before the next span, so it is trained
    assert trained_text(tok, enc) == f"Hello!{eos}\n4{eos}"


def test_bos_tokenizer_and_chat_template_masks():
    _, tok = load("tiny_llama")
    messages = conversations(1)[0]
    enc = encode_conversation(tok, messages, 512)
    assert enc.input_ids[0] == tok.bos_token_id and enc.labels[0] == IGNORE
    assert trained_text(tok, enc) == f"It is 0.{tok.eos_token}"
    enc = encode_conversation(tok, messages, 512, format="chat_template")
    assert trained_text(tok, enc) == "It is 0.<|eot_id|>"
    with pytest.raises(ValueError, match="role"):
        encode_conversation(tok, [{"role": "robot", "content": "x"}], 64)


def test_prompt_completion_masks_the_prompt_and_adds_eos():
    _, tok = load("tiny_llama")
    enc = encode_prompt_completion(tok, "Question: 1+1?\nAnswer:", " 2", 512)
    assert trained_text(tok, enc) == f" 2{tok.eos_token}"
    assert enc.input_ids[: len(enc.input_ids) - enc.n_label_tokens] == tok("Question: 1+1?\nAnswer:").input_ids


def test_settings_are_validated():
    with pytest.raises(ValueError, match="multiple"):
        LoraSettings(batch_size=6, micro_batch_size=4)
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(rank=0)
    assert LoraSettings(target_modules=["q_proj"]).identity()["target_modules"] == ["q_proj"]


def test_training_learns_saves_each_epoch_and_restores_the_base(tmp_path):
    model, tok = load("tiny_llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = LoraSettings(rank=4, alpha=8, dropout=0.0, epochs=3, learning_rate=2e-2, batch_size=4, micro_batch_size=2, max_length=128)
    result = train_lora(model, tok, conversations(), settings, tmp_path / "run", model_name="tiny_llama", save_optimizer=True)

    assert result.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert [c.epoch for c in result.checkpoints] == [1, 2, 3] and [c.step for c in result.checkpoints] == [6, 12, 18]
    assert len(result.losses) == 18 and result.checkpoints[-1].mean_loss < result.checkpoints[0].mean_loss
    lrs = [c.mean_learning_rate for c in result.checkpoints]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # linear decay after warm-up
    weights = load_file(Path(result.final_adapter) / ADAPTER_FILE)
    assert weights and all("lora_" in k for k in weights)
    adam = load_adam_state(result.checkpoints[-1].optimizer_path)
    assert len(adam) == len(weights) and all(v.min() >= 0 and v.abs().sum() > 0 for _, v in adam.values())
    assert result.train_tokens > result.label_tokens > 0 and result.tokens_per_second > 0

    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    ids = torch.tensor([encode_conversation(tok, conversations(1)[0], 128).input_ids])
    with torch.inference_mode():
        base = model(ids).logits
        with adapter_applied(model, result.final_adapter) as tuned:
            adapted = tuned(ids).logits
        assert torch.equal(model(ids).logits, base)
    assert not torch.allclose(adapted, base)


def test_same_seed_same_adapter_and_truncated_rows_dropped(tmp_path):
    model, tok = load("tiny_gpt2")
    settings = LoraSettings(rank=2, alpha=4, epochs=1, learning_rate=1e-2, batch_size=4, max_length=64)
    rows = conversations(8) + [[{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]]
    a = train_lora(model, tok, rows, settings, tmp_path / "a")
    b = train_lora(model, tok, rows, settings, tmp_path / "b")
    assert a.target_modules == "all-linear" and a.n_rows == 8 and a.n_dropped == 1
    wa, wb = load_file(Path(a.final_adapter) / ADAPTER_FILE), load_file(Path(b.final_adapter) / ADAPTER_FILE)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train_lora(model, tok, rows, LoraSettings(**{**settings.identity(), "seed": 1}), tmp_path / "c")
    assert not all(torch.equal(wa[k], w) for k, w in load_file(Path(c.final_adapter) / ADAPTER_FILE).items())
    with pytest.raises(ValueError, match="nothing to train on"):
        train_lora(model, tok, rows[-1:], settings, tmp_path / "d")
