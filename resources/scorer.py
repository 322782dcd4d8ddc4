"""The causal-LM scorer: any Hugging Face causal LM, loaded once per process, on the GPU if any."""

import functools
import hashlib
from pathlib import Path
from typing import Literal

import dagster as dg
import orjson
from pydantic import Field

from resources.models import ModelNotAvailableError, pick_device, resolve_model_path


@functools.lru_cache(maxsize=4)  # the scorer and DEITA's two
def _load(name: str, device: str, dtype: str, attn: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), attn_implementation=attn)
    except OSError as exc:
        raise ModelNotAvailableError(
            f"cannot load scorer model {name!r} ({exc}). Set the scorer's `model` to a local folder, or download "
            f"it once with `huggingface-cli download {name}`."
        ) from exc
    return tokenizer, model.to(pick_device(device)).eval()


@functools.lru_cache(maxsize=2)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(name))
    except OSError as exc:
        raise ModelNotAvailableError(f"cannot load the tokenizer of scorer model {name!r} ({exc})") from exc


def model_fingerprint(name: str) -> str:
    """Identity of the weights: the config and weight files' names and sizes (a snapshot id for
    hub models), so a changed model makes its scores stale."""
    path = Path(resolve_model_path(name))
    if not path.is_dir():
        return name
    files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    config = (path / "config.json").read_bytes() if (path / "config.json").exists() else b""
    return hashlib.sha256(orjson.dumps([files, config.decode(errors="replace")])).hexdigest()[:16]


class CausalLMScorerResource(dg.ConfigurableResource):
    """A causal LM that scores token losses (IFD and its variants).

    dtype float32 is the default because the parity tests hold in float32; bfloat16 is faster on GPUs.
    Batches hold at most `token_budget` padded tokens of length-sorted rows; a batch that runs out of
    GPU memory is split.
    """

    model: str = Field("gpt2", description="Hugging Face id or local folder (Superfiltering and T-SHIRT use gpt2).")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    token_budget: int | None = Field(None, description="Padded tokens per forward pass; default 32,768 on a GPU, 2,048 on a CPU.")
    attn_implementation: str = Field("sdpa", description="sdpa, eager, flash_attention_2 ...")

    def load(self):
        return _load(self.model, self.device, self.dtype, self.attn_implementation)

    def eos_token(self) -> str:
        """The tokenizer's EOS string (IterIT appends it to each response document)."""
        return _tokenizer(self.model).eos_token or ""

    def identity(self) -> dict:
        return {"model": self.model, "weights": model_fingerprint(self.model), "dtype": self.dtype}


class DeitaScorersResource(dg.ConfigurableResource):
    """DEITA's complexity and quality scorers (causal LMs fine-tuned to answer 1-6), used by the
    `deita` method of instance_scores. Any folder or Hugging Face id; loaded only when used."""

    complexity_model: str = Field("hkust-nlp/deita-complexity-scorer", description="Complexity scorer: Hugging Face id or local folder.")
    quality_model: str = Field("hkust-nlp/deita-quality-scorer", description="Quality scorer: Hugging Face id or local folder.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    token_budget: int | None = Field(None, description="Padded tokens per forward pass; default 32,768 on a GPU, 2,048 on a CPU.")

    def scorer(self, kind: Literal["complexity", "quality"]) -> CausalLMScorerResource:
        model = self.complexity_model if kind == "complexity" else self.quality_model
        return CausalLMScorerResource(model=model, device=self.device, dtype=self.dtype, token_budget=self.token_budget)

    def identity(self) -> dict:
        return {kind: self.scorer(kind).identity() for kind in ("complexity", "quality")}
