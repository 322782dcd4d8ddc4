"""The base causal LM of targeted selection: LESS's warm-up and gradients, and RDS+ features, run on
the model that is then fine-tuned (research/targeted.md §6.4)."""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field

from resources.models import ModelNotAvailableError, causal_lm_folder, pick_device, resolve_causal_lm


class TargetModelResource(dg.ConfigurableResource):
    """Loaded fresh for each use (the warm-up attaches and removes LoRA layers), on the GPU when there
    is one. dtype auto: bfloat16 on a GPU that has it (LESS, TIS), float32 on a CPU."""

    model: str = Field("meta-llama/Llama-2-7b-hf", description="Hugging Face id, local folder, .gguf file or package:MODULE/FILE.gguf (TIS/LESS: Llama-2-7b).")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    attn_implementation: str = Field("sdpa", description="Attention for the warm-up and RDS+ (sdpa, eager, ...). Gradients always use eager: fused SDPA kernels have no vmap batching rule and fall back to a per-row loop.")

    def resolved_device(self) -> str:
        return pick_device(self.device)

    def torch_dtype(self):
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        cuda = self.resolved_device().startswith("cuda")
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32

    def load(self, attn_implementation: str | None = None):
        """(tokenizer, model) on the device, in eval mode."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = causal_lm_folder(self.model)  # a GGUF file is de-quantized once into a cached folder
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=self.torch_dtype(), attn_implementation=attn_implementation or self.attn_implementation)
        except OSError as exc:
            raise ModelNotAvailableError(
                f"cannot load the target model {self.model!r} ({exc}). Set resources.target_model.model to a local "
                f"folder, or download it once with `huggingface-cli download {self.model}`."
            ) from exc
        return tokenizer, model.to(self.resolved_device()).eval()

    def identity(self) -> dict:
        return {"model": self.model, "weights": resolve_causal_lm(self.model).fingerprint(), "dtype": self.dtype}
