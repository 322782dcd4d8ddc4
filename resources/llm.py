"""Chat models behind one interface: any OpenAI-compatible endpoint, or a local `transformers` model.

`generate` sends many conversations and returns, for each, the parsed answer or the reason it has
none. A transport error (time-out, 429, 5xx, broken response) or an answer the parser rejects is
retried with exponential back-off; a conversation still failing after `max_retries` retries comes
back with `ok=False` and its last error, never silently dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
import httpx
import orjson
from pydantic import Field

from resources.models import load_causal_lm

Messages = list[dict[str, str]]


class ParseError(ValueError):
    """The model answered, but not in the expected format."""


@dataclass
class Completion:
    ok: bool
    value: Any = None
    text: str | None = None
    error: str | None = None
    attempts: int = 0


class ChatModelResource(dg.ConfigurableResource):
    """Settings shared by every chat-model resource (tagger, judge, tree namer)."""

    backend: Literal["openai", "transformers"] = Field("openai", description="openai: any OpenAI-compatible endpoint; transformers: a local model.")
    model: str = Field("gpt-4o-mini", description="Model name at the endpoint; for transformers a HF id, folder, .gguf file or package:MODULE/FILE.gguf.")
    base_url: str = Field("https://api.openai.com/v1", description="Endpoint root, e.g. http://localhost:8000/v1 for vLLM or SGLang.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (never logged).")
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = Field(None, description="Sent to endpoints that support it; seeds local sampling.")
    max_concurrency: int = Field(8, description="Requests in flight at once.")
    timeout_s: float = Field(60.0, description="Per-request time-out.")
    max_retries: int = Field(3, description="Retries after the first attempt.")
    backoff_s: float = Field(2.0, description="First back-off; doubles on each retry.")
    device: str = Field("auto", description="transformers backend: auto, cpu, cuda ...")
    dtype: str = Field("auto", description="transformers backend: auto, float32, bfloat16, float16.")
    batch_size: int = Field(16, description="transformers backend: conversations per generate call.")

    def generation_key(self) -> dict:
        """What changes the answers: part of the cache version of every result."""
        return {
            "backend": self.backend,
            "model": self.model,
            "base_url": self.base_url if self.backend == "openai" else None,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }

    def generate(self, conversations: list[Messages], parse: Callable[[str], Any]) -> list[Completion]:
        if not conversations:
            return []
        if self.backend == "openai":
            return asyncio.run(_openai_generate(self, conversations, parse))
        return _transformers_generate(self, conversations, parse)


def version_hash(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


# --------------------------------------------------------------------------- OpenAI-compatible


class _Retryable(Exception):
    pass


async def _openai_generate(cfg: ChatModelResource, conversations: list[Messages], parse) -> list[Completion]:
    key = os.environ.get(cfg.api_key_env, "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
    semaphore = asyncio.Semaphore(cfg.max_concurrency)
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    async with httpx.AsyncClient(timeout=cfg.timeout_s, headers=headers, limits=limits) as client:

        async def one(messages: Messages) -> Completion:
            body = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens}
            if cfg.seed is not None:
                body["seed"] = cfg.seed
            error = None
            for attempt in range(cfg.max_retries + 1):
                if attempt:
                    await asyncio.sleep(cfg.backoff_s * 2 ** (attempt - 1) * (0.75 + 0.5 * random.random()))
                text = None
                try:
                    async with semaphore:
                        response = await client.post(url, json=body)
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _Retryable(f"HTTP {response.status_code}")
                    if response.status_code >= 400:  # bad request, auth: retrying will not help
                        return Completion(False, error=f"HTTP {response.status_code}: {response.text[:200]}", attempts=attempt + 1)
                    try:
                        text = response.json()["choices"][0]["message"]["content"]
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        raise _Retryable(f"malformed response: {str(exc)[:100]}") from exc
                    return Completion(True, value=parse(text), text=text, attempts=attempt + 1)
                except httpx.TimeoutException:
                    error = f"timed out after {cfg.timeout_s}s"
                except httpx.TransportError as exc:
                    error = f"connection error: {type(exc).__name__}"
                except _Retryable as exc:
                    error = str(exc)
                except ParseError as exc:
                    error = f"unparseable answer: {exc}"
                last_text = text
            return Completion(False, text=last_text, error=error, attempts=cfg.max_retries + 1)

        return list(await asyncio.gather(*(one(m) for m in conversations)))


# --------------------------------------------------------------------------- local transformers


def _left_padded(tokenizer, prompts: list[str], pad_id: int, add_special_tokens: bool) -> dict:
    """input_ids and attention_mask, padded on the left (generation continues every row at the end)."""
    import torch

    ids = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    return {"input_ids": input_ids, "attention_mask": mask}


def render_chat(tokenizer, messages: Messages, add_generation_prompt: bool = True) -> str:
    """The model's own chat template; a plain 'role: content' layout when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def _transformers_generate(cfg: ChatModelResource, conversations: list[Messages], parse) -> list[Completion]:
    import torch

    tokenizer, model = load_causal_lm(cfg.model, cfg.device, cfg.dtype)
    # The tokenizer may be shared with a scorer of the same model: pad per call, never mutate it.
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    results: list[Completion | None] = [None] * len(conversations)
    prompts_all = [render_chat(tokenizer, m) for m in conversations]
    # Longest first, so that each batch holds prompts of similar length (little padding).
    pending = sorted(range(len(conversations)), key=lambda i: -len(prompts_all[i]))
    for attempt in range(cfg.max_retries + 1):
        if not pending:
            break
        # A retry samples, so that a rejected greedy answer is not simply produced again.
        sample = cfg.temperature > 0 or attempt > 0
        failed = []
        for start in range(0, len(pending), cfg.batch_size):
            batch = pending[start : start + cfg.batch_size]
            enc = _left_padded(tokenizer, [prompts_all[i] for i in batch], pad_id, add_special_tokens=not getattr(tokenizer, "chat_template", None))
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=cfg.max_tokens,
                    do_sample=sample,
                    temperature=(cfg.temperature if cfg.temperature > 0 else 0.7) if sample else None,
                    top_p=cfg.top_p if sample else None,
                    pad_token_id=pad_id,
                )
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, text in zip(batch, texts):
                try:
                    results[i] = Completion(True, value=parse(text), text=text, attempts=attempt + 1)
                except ParseError as exc:
                    results[i] = Completion(False, text=text, error=f"unparseable answer: {exc}", attempts=attempt + 1)
                    failed.append(i)
        pending = failed
    return results  # type: ignore[return-value]
