"""Chat models behind one interface: any OpenAI-compatible endpoint, or a local `transformers` model.

`generate` sends many conversations and returns, for each, the parsed answer or the reason it has
none. A transport error (time-out, 429, 5xx, broken response) or an answer the parser rejects is
retried with exponential back-off and jitter (tenacity; a 4xx other than 429 is not retried); a
conversation still failing after `max_retries` retries comes back with `ok=False` and its last
error, never silently dropped.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
import httpx
import tenacity
from pydantic import Field

from curation_assets.methods.chat import Messages, ParseError  # noqa: F401  (re-exported for the clients)
from curation_assets.methods.plugin import version_hash  # noqa: F401
from resources.models import load_causal_lm



@dataclass
class Completion:
    ok: bool
    value: Any = None
    text: str | None = None
    error: str | None = None
    attempts: int = 0


# For the assets that call endpoints: a step that still fails after the per-request retries (an
# outage, a crashed worker) is retried by Dagster, and its cached chunks make the retry resume.
ENDPOINT_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


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

    def generate(self, conversations: list[Messages], parse: Callable[[str], Any], max_tokens: int | None = None) -> list[Completion]:
        """One completion per conversation, parsed by `parse` (a ParseError re-asks, then is the
        row's reason). With the transformers backend a conversation may end in an assistant turn,
        which the model continues (a prefill); `max_tokens` overrides the resource's for this call."""
        if not conversations:
            return []
        if max_tokens is not None:
            self = self.model_copy(update={"max_tokens": max_tokens})
        if self.backend == "openai":
            key = api_key(self.api_key_env)
            try:
                completions = asyncio.run(_openai_generate(self, conversations, parse))
            except Exception as exc:
                if key and key in str(exc):
                    # Dagster stores an escaping error's text and its cause: neither may hold the key.
                    raise RuntimeError(redact(f"{type(exc).__name__}: {exc}", key)) from None
                raise
            return [redact_completion(c, key) for c in completions]
        return _transformers_generate(self, conversations, parse)


REDACTED = "[REDACTED]"


def api_key(env_var: str) -> str:
    """The API key, from the environment only (never from config, so never in run config or logs)."""
    return os.environ.get(env_var, "")


def redact(text: str | None, secret: str) -> str | None:
    """`text` with every occurrence of `secret` replaced: endpoints echo keys in error bodies."""
    if not text or not secret:
        return text
    return text.replace(secret, REDACTED)


def redact_completion(completion: Completion, secret: str) -> Completion:
    """What we store of an answer (its text, its error) never carries the key."""
    if secret:
        completion.text = redact(completion.text, secret)
        completion.error = redact(completion.error, secret)
        completion.value = _redact_value(completion.value, secret)
    return completion


def _redact_value(value: Any, secret: str) -> Any:
    """A parsed answer (tags, scores) with the key redacted in every string it holds."""
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, list):
        return [_redact_value(v, secret) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, secret) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- OpenAI-compatible


class _Retryable(Exception):
    pass


class _Refused(Exception):
    """A 4xx other than 429 (bad request, auth): retrying will not help."""


# Worth another attempt: time-outs, connection errors, 429 and 5xx, broken bodies, unparseable answers.
_RETRY_ON = (httpx.TimeoutException, httpx.TransportError, _Retryable, ParseError)


def _describe(exc: BaseException, cfg: ChatModelResource) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {cfg.timeout_s}s"
    if isinstance(exc, httpx.TransportError):
        return f"connection error: {type(exc).__name__}"
    if isinstance(exc, ParseError):
        return f"unparseable answer: {exc}"
    return str(exc)


async def _openai_generate(cfg: ChatModelResource, conversations: list[Messages], parse) -> list[Completion]:
    key = api_key(cfg.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
    semaphore = asyncio.Semaphore(cfg.max_concurrency)
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    async with httpx.AsyncClient(timeout=cfg.timeout_s, headers=headers, limits=limits) as client:

        async def one(messages: Messages) -> Completion:
            body = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens}
            if cfg.seed is not None:
                body["seed"] = cfg.seed
            last_text: list[str | None] = [None]

            async def attempt():
                last_text[0] = None
                async with semaphore:
                    response = await client.post(url, json=body)
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retryable(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise _Refused(f"HTTP {response.status_code}: {response.text[:200]}")
                try:
                    text = response.json()["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    raise _Retryable(f"malformed response: {str(exc)[:100]}") from exc
                last_text[0] = text
                return parse(text)

            retrying = tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(cfg.max_retries + 1),
                wait=tenacity.wait_exponential_jitter(initial=cfg.backoff_s, jitter=cfg.backoff_s / 2),
                retry=tenacity.retry_if_exception_type(_RETRY_ON),
                reraise=True,
            )
            try:
                value = await retrying(attempt)
            except (_Refused, *_RETRY_ON) as exc:
                return Completion(False, text=last_text[0], error=_describe(exc, cfg), attempts=retrying.statistics["attempt_number"])
            return Completion(True, value=value, text=last_text[0], attempts=retrying.statistics["attempt_number"])

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
    """The model's own chat template; a plain 'role: content' layout when it has none. A final
    assistant turn is left open, so that the model continues it."""
    prefill = messages[-1]["role"] == "assistant"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt and not prefill, continue_final_message=prefill)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    if prefill:
        return text[:-1]
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
