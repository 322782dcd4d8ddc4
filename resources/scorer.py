"""The causal-LM scorer: any causal LM (Hugging Face id, folder or GGUF file), loaded once per process, on the GPU if any."""

from typing import Literal

import dagster as dg
from pydantic import Field

from resources.models import load_causal_lm, load_tokenizer, resolve_causal_lm


class CausalLMScorerResource(dg.ConfigurableResource):
    """A causal LM that scores token losses (IFD and its variants).

    dtype float32 is the default because the parity tests hold in float32; bfloat16 is faster on GPUs.
    Batches hold at most `token_budget` padded tokens of length-sorted rows; a batch that runs out of
    GPU memory is split.
    """

    model: str = Field("gpt2", description="Hugging Face id, local folder, .gguf file or package:MODULE/FILE.gguf (Superfiltering and T-SHIRT use gpt2).")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    token_budget: int | None = Field(None, description="Padded tokens per forward pass; default 32,768 on a GPU, 2,048 on a CPU.")
    attn_implementation: str = Field("sdpa", description="sdpa, eager, flash_attention_2 ...")

    def load(self):
        return load_causal_lm(self.model, self.device, self.dtype, self.attn_implementation)

    def eos_token(self) -> str:
        """The tokenizer's EOS string (IterIT appends it to each response document)."""
        return load_tokenizer(self.model).eos_token or ""

    def identity(self) -> dict:
        return {"model": self.model, "weights": resolve_causal_lm(self.model).fingerprint(), "dtype": self.dtype}


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
