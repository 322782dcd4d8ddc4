"""Instruction-Following Difficulty in the forms of its reference codebases (research/tshirt-iterit.md
§1, §3.1, §4; reference-quirks.md §1, §3).

- Superfiltering (`superfiltering`): prompt "{instruction}\\n[{input}\\n]", IFD = PPL(y|x) / PPL(y).
  Conditional span: the response tokens of prompt+response truncated to `max_length`, located by
  tokenizing the text before the response on its own. Direct: the response alone, truncated to
  max_length - P + 1; without a BOS its first token is not scored (T-1 tokens).
  Quirks kept: NaN for an empty or 1-token response and for a prompt that fills the window. Quirk
  changed: the reference turns any exception into a silent (0, 0) -> IFD 0; here an error (a single
  row too large for memory included) fails the run with its cause, so no row gets a made-up 0.
- T-SHIRT's clean row (`tshirt` clean IFD and token differences d_t = l^c_t - l^u_t) is the same
  computation with a direct budget one token smaller (max_length - P, +1 with a BOS); causal models
  make its direct losses a prefix of Superfiltering's, so one pass serves both.
- Cherry LLM (`cherry`): the Stanford Alpaca prompt, direct text "### Response:" + response with a
  budget of max_length - P + 4, IFD = mean loss ratio, plus the reference's skip rules.
- IterIT (`iterit`): the model's chat template with the system prompt "You are a helpful
  assistant.", both spans of the same length (first answer token and trailing template tokens
  included), IFD = exp(cl) / exp(pl), 0 when pl == 0, stored as bfloat16. By default the response is
  stripped first (the template trims contents, so the reference fails to find responses with outer
  whitespace: research PROPOSAL); `strip_output=False` reproduces the reference. IterIT's train.py
  adds a `[PAD]` token to a tokenizer without one and mean-initialises its embedding rows before
  scoring, which adds one logit to every softmax and shifts cl and pl (by about 1e-5 relative on a
  real model, 1e-3 on the tiny test model), the ratio much less; `add_pad=True` reproduces that
  without changing the model (text holding the literal string "[PAD]" is not reproduced: the
  reference tokenizes it as the pad token and masks it out of attention).

Multi-turn rows: every turn before the last assistant turn is context; the last assistant turn is
the response. The plain templates join the context turns with newlines; IterIT renders them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from curation_assets.methods.token_losses import LossRequest, added_pad_row, mean_or_nan, token_losses

ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
# Cherry LLM's prompt modes (cherry_seletion/*_vic.py, the V2 scripts): (prompt with input, prompt
# without, direct-answer prefix, tokens the direct budget adds back for that prefix).
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHERRY_PROMPTS = {
    "alpaca": (ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, "### Response:", 4),
    "wiz": ("{instruction}\n{input}\n\n### Response:", "{instruction}\n\n### Response:", "### Response:", 4),
    "vicuna": (VICUNA_SYSTEM + " USER: {instruction}\nInput:\n{input} ASSISTANT:", VICUNA_SYSTEM + " USER: {instruction} ASSISTANT:", "ASSISTANT:", 6),
}
ITERIT_SYSTEM = "You are a helpful assistant."
# IterIT's train.py sets the llama-3.1 format on its base model. This template renders that format
# for plain conversations (no tools): a system block that always carries the fixed knowledge and
# "today" dates, then each turn trimmed and closed by <|eot_id|>.
LLAMA31_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' + system + '<|eot_id|>' }}"
    "{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
ITERIT_TEMPLATES = {"llama-3.1": LLAMA31_TEMPLATE}


@dataclass
class Sample:
    """What the scorers need of a row: the plain fields, plus the turns for chat templates."""

    instruction: str
    input: str
    output: str
    context: list[dict[str, str]] | None = None  # earlier turns of a multi-turn row (before the last user turn)


class Tokens:
    """Tokenization that reproduces Hugging Face truncation while tokenizing each text once."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        plain = tokenizer("x", add_special_tokens=False).input_ids
        full = tokenizer("x").input_ids
        at = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
        self.prefix, self.suffix = full[:at], full[at + len(plain) :]

    def encode(self, texts: list[str], special: bool = True) -> list[list[int]]:
        if not texts:
            return []
        body = self.tok(texts, add_special_tokens=False).input_ids
        return [self.prefix + b + self.suffix for b in body] if special else body

    def truncate(self, ids: list[int], max_length: int) -> list[int]:
        """As `tokenizer(text, truncation=True, max_length=...)`: special tokens stay."""
        if len(ids) <= max_length:
            return ids
        keep = max_length - len(self.prefix) - len(self.suffix)
        if keep < 0:
            raise OverflowError(f"max_length {max_length} leaves no room for the special tokens")
        return ids[: len(self.prefix) + keep] + (ids[len(ids) - len(self.suffix) :] if self.suffix else [])

    @property
    def has_bos(self) -> bool:
        return bool(self.prefix)


def plain_prompt(sample: Sample) -> str:
    """Superfiltering / T-SHIRT template: "{instruction}\\n" or "{instruction}\\n{input}\\n"."""
    instruction = sample.instruction
    if sample.context:
        instruction = "\n".join(t["content"] for t in sample.context) + "\n" + instruction
    return instruction + "\n" + (sample.input + "\n" if sample.input else "")


@dataclass
class PlainIFD:
    """Superfiltering IFD and T-SHIRT's clean row, from one conditional and one direct pass."""

    prompt_tokens: int
    response_tokens: int
    sf_loss_cond: float
    sf_loss_direct: float
    ifd_ppl: float
    tshirt_ifd: float
    tshirt_d: np.ndarray  # d_t = l^c_t - l^u_t over tokens 2..T (T-SHIRT's "pmi"), float32
    error: str | None


def plain_ifd(model, tokenizer, samples: list[Sample], *, max_length: int = 1024, token_budget: int | None = None) -> list[PlainIFD]:
    tokens = Tokens(tokenizer)
    prompts = [plain_prompt(s) for s in samples]
    whole = [p + s.output for p, s in zip(prompts, samples)]
    prompt_ids = tokens.encode(prompts)
    whole_ids = tokens.encode(whole)
    # Superfiltering locates the response by tokenizing the text before its last occurrence.
    starts = [len(ids) for ids in tokens.encode([w[: w.rfind(s.output)] for w, s in zip(whole, samples)])]
    output_ids = tokens.encode([s.output for s in samples])
    requests, layout = [], []
    for i, s in enumerate(samples):
        if s.output == "":
            layout.append(None)
            continue
        p_sf = min(len(prompt_ids[i]), max_length)  # P as Superfiltering counts it (truncated)
        cond = tokens.truncate(whole_ids[i], max_length)
        direct = tokens.truncate(output_ids[i], max(max_length - p_sf + 1, 1))
        layout.append((len(requests), p_sf, len(prompt_ids[i])))
        requests.append(LossRequest(cond, starts[i], len(cond)))
        requests.append(LossRequest(direct, 0 if tokens.has_bos else 1, len(direct)))
    losses = token_losses(model, requests, token_budget=token_budget)
    out = []
    for i, s in enumerate(samples):
        if layout[i] is None:
            out.append(PlainIFD(0, 0, np.nan, np.nan, np.nan, np.nan, np.zeros(0, np.float32), "empty response"))
            continue
        at, p_sf, p_ts = layout[i]
        cond, direct = losses[at], losses[at + 1]
        lc, lu = mean_or_nan(cond), mean_or_nan(direct)
        ifd_ppl = float(np.exp(lc) / np.exp(lu))
        # T-SHIRT: P untruncated, direct budget max_length - P (+1 with a BOS), d over tokens 2..T.
        budget = max_length - p_ts + (1 if tokens.has_bos else 0)
        if budget <= 0:
            out.append(PlainIFD(p_sf, len(cond), lc, lu, ifd_ppl, np.nan, np.zeros(0, np.float32), "prompt longer than max_length"))
            continue
        n_direct = min(len(output_ids[i]), budget) - 1  # position 0 is never scored
        ts_direct = direct[:n_direct]
        ts_ifd = float(np.exp(mean_or_nan(cond)) / np.exp(mean_or_nan(ts_direct))) if n_direct > 0 else float("nan")
        offset = 0 if tokens.has_bos else 1
        d = cond[offset:] - ts_direct if len(cond) - offset == len(ts_direct) else np.zeros(0, np.float32)
        error = None if len(cond) - offset == len(ts_direct) else "conditional and direct spans differ (tokens merged at the boundary)"
        out.append(PlainIFD(p_sf, len(cond), lc, lu, ifd_ppl, ts_ifd, d.astype(np.float32), error))
    return out


@dataclass
class CherryIFD:
    loss_cond: float
    loss_direct: float
    ifd_loss: float
    skip: str | None  # why Cherry's selection drops the row, or None


def cherry_ifd(
    model, tokenizer, samples: list[Sample], *, max_length: int = 512, token_budget: int | None = None, prompt: str = "alpaca"
) -> list[CherryIFD]:
    """Cherry LLM's loss-ratio IFD (cherry_seletion/data_analysis*.py --mod cherry + data_by_IFD*.py),
    with its prompt modes alpaca, wiz (WizardLM) and vicuna (V2)."""
    if prompt not in CHERRY_PROMPTS:
        raise ValueError(f"cherry prompt must be one of {sorted(CHERRY_PROMPTS)}, not {prompt!r}")
    with_input, no_input, direct_prefix, prefix_tokens = CHERRY_PROMPTS[prompt]
    tokens = Tokens(tokenizer)
    prompts = []
    for s in samples:
        instruction = s.instruction if not s.context else "\n".join(t["content"] for t in s.context) + "\n" + s.instruction
        prompts.append((with_input if s.input else no_input).format(instruction=instruction, input=s.input))
    whole = [p + s.output for p, s in zip(prompts, samples)]
    direct_texts = [direct_prefix + s.output for s in samples]
    prompt_ids = tokens.encode(prompts)
    whole_ids, direct_ids = tokens.encode(whole), tokens.encode(direct_texts)
    cond_starts = [len(x) for x in tokens.encode([w[: w.rfind(s.output)] for w, s in zip(whole, samples)])]
    direct_starts = [len(x) for x in tokens.encode([d[: d.rfind(s.output)] for d, s in zip(direct_texts, samples)])]
    requests, layout = [], []
    for i in range(len(samples)):
        p = min(len(prompt_ids[i]), max_length)
        if max_length - p <= 0:
            layout.append(("prompt_len_ge_max_length", p))
            continue
        cond = tokens.truncate(whole_ids[i], max_length)
        direct = tokens.truncate(direct_ids[i], max_length - p + prefix_tokens)
        layout.append((len(requests), p))
        requests.append(LossRequest(cond, cond_starts[i], len(cond)))
        requests.append(LossRequest(direct, direct_starts[i], len(direct)))
    losses = token_losses(model, requests, token_budget=token_budget)
    out = []
    for i in range(len(samples)):
        at, p = layout[i]
        if isinstance(at, str):
            out.append(CherryIFD(np.nan, np.nan, np.nan, at))
            continue
        cond, direct = losses[at], losses[at + 1]
        if len(direct) == 0 or len(cond) == 0:
            out.append(CherryIFD(mean_or_nan(cond), mean_or_nan(direct), np.nan, "empty_answer_span"))
            continue
        lc, lu = float(cond.mean()), float(direct.mean())
        rate = lc / lu
        skip = "answer_truncated" if p + len(direct) > max_length else ("mean_rate_gt_1" if rate > 1 else None)
        out.append(CherryIFD(lc, lu, rate, skip))
    return out


@dataclass
class IterITIFD:
    cl: float
    pl: float
    ifd: float  # float32 ratio
    ifd_bf16: float  # as IterIT stores it
    answer_tokens: int


def iterit_ifd(
    model, tokenizer, samples: list[Sample], *, max_length: int = 8192, token_budget: int | None = None, strip_output: bool = True,
    chat_template: str | None = None, add_pad: bool = False,
) -> list[IterITIFD]:
    """IterIT's IFD under a chat template (src/data_utils.py + src/iterative_trainer.py): the
    model's own, or `chat_template` (Jinja text, e.g. LLAMA31_TEMPLATE as IterIT's train.py sets).
    `add_pad`: score as after train.py's [PAD] token (only when the tokenizer has no pad token)."""
    if not chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the IterIT score needs a chat template: this tokenizer has none (set iterit_chat_template, e.g. llama-3.1)")
    render = lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template)  # noqa: E731
    whole, direct, outputs = [], [], []
    for s in samples:
        output = s.output.strip() if strip_output else s.output
        chat = [{"role": "system", "content": ITERIT_SYSTEM}, *(s.context or [])]
        chat.append({"role": "user", "content": s.instruction + ("\nInput: " + s.input if s.input else "")})
        whole.append(render([*chat, {"role": "assistant", "content": output}]))
        direct.append(render([{"role": "assistant", "content": output}]))
        outputs.append(output)
    tokens = Tokens(tokenizer)
    whole_ids = tokens.encode(whole, special=False)
    direct_ids = tokens.encode(direct, special=False)
    cond_starts = [len(x) for x in tokens.encode([w[: w.rfind(o)] for w, o in zip(whole, outputs)], special=False)]
    prior_starts = [len(x) for x in tokens.encode([d[: d.rfind(o)] for d, o in zip(direct, outputs)], special=False)]
    requests = []
    answer_lens = []
    for i in range(len(samples)):
        ans = max(min(max_length, len(whole_ids[i])) - cond_starts[i], 0)
        answer_lens.append(ans)
        requests.append(LossRequest(whole_ids[i][:max_length], cond_starts[i], cond_starts[i] + ans))
        requests.append(LossRequest(direct_ids[i][:max_length], prior_starts[i], prior_starts[i] + ans))
    extra_row = added_pad_row(model, len(tokenizer)) if add_pad and tokenizer.pad_token is None else None
    losses = token_losses(model, requests, token_budget=token_budget, extra_row=extra_row)
    out = []
    for i in range(len(samples)):
        cl, pl = mean_or_nan(losses[2 * i]), mean_or_nan(losses[2 * i + 1])
        ifd = float(np.float32(np.exp(np.float32(cl)) / np.exp(np.float32(pl)))) if pl != 0.0 else 0.0
        out.append(IterITIFD(cl, pl, ifd, float(torch.tensor(ifd).to(torch.bfloat16).item()), answer_lens[i]))
    return out


def samples_from_rows(instructions, inputs, responses, messages) -> list[Sample]:
    """Samples from raw_pool views: single-turn rows keep instruction and input apart; in a
    multi-turn row the last user turn is the instruction and the turns before it the context."""
    samples = []
    for instruction, input_text, response, turns in zip(instructions, inputs, responses, messages):
        n_assistant = sum(t["role"] == "assistant" for t in turns)
        if n_assistant <= 1:
            samples.append(Sample(instruction, input_text or "", response))
            continue
        last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
        context = [{"role": t["role"], "content": t["content"]} for t in turns[:last_user]]
        samples.append(Sample(turns[last_user]["content"], "", response, context))
    return samples
