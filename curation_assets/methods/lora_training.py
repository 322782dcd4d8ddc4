"""LoRA fine-tuning of a causal LM on conversations, the loss on assistant tokens only.

Shared by `subset_model` (fine-tune on a subset and its baselines) and LESS's warm-up
(`warmup_adapter`). The formatting and masks are those of research/targeted.md §2, which TIS and
LESS take from open-instruct (`encode_with_messages_format`):

- `tulu` format (default): turns joined as "<|system|>\\n{c}\\n", "<|user|>\\n{c}\\n" and
  "<|assistant|>\\n{c}{eos}\\n" with contents stripped, the whole text stripped again; the
  tokenizer's own special tokens (a BOS) are added; truncation at `max_length`. Labels are the input
  ids with every non-assistant span, and the "<|assistant|>\\n" header, set to -100; span ends are
  the token counts of the text prefixes tokenized on their own, as open-instruct counts them.
- `chat_template` format: the tokenizer's chat template, masked the same way (prefix renderings
  with the generation prompt), for instruct models whose template the evaluation also uses.
- Rows whose labels are all masked after truncation are dropped (TIS `train_sft.py`) and counted.

Queries (prompt + completion, LESS/TIS evaluation and gradients) are encoded by
`encode_prompt_completion`: the prompt with special tokens, the completion (+ EOS by default, TIS)
without, the prompt masked.

Training runs through the transformers `Trainer` (AdamW, the configured schedule and linear warm-up,
weight decay 0, seeded). After each epoch the adapter is saved as safetensors (PEFT's
`adapter_model.safetensors` + `adapter_config.json`) and, optionally, the Adam moments of every
trainable parameter (`optimizer.safetensors`: "<param name>.exp_avg" and ".exp_avg_sq", named as in
`named_parameters()` of the PEFT model, its "step" in the file metadata), which LESS preconditions
candidate gradients with. The base model is handed back without its LoRA layers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

TULU_HEADERS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}
IGNORE = -100
ADAPTER_FILE = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA and schedule settings. Defaults: LESS's warm-up (research/targeted.md §3.1), except the
    epoch count (1: LESS uses 4) and `batch_size` (the effective batch: LESS 128 = 1 x 128 steps)."""

    rank: int = 128
    alpha: float = 512.0
    dropout: float = 0.1
    # "auto": q/k/v/o projections when the model name contains "llama", otherwise every linear
    # layer but the head (TIS train_sft.py's rule); or an explicit list of module names.
    target_modules: str | tuple[str, ...] = "auto"
    epochs: int = 1
    learning_rate: float = 2e-5
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 128  # rows per optimizer step
    micro_batch_size: int = 1  # rows per forward pass (batch_size must be a multiple)
    max_length: int = 2048
    seed: int = 0
    format: Literal["tulu", "chat_template"] = "tulu"
    group_by_length: bool = False  # fewer padded tokens with micro batches > 1; order then differs
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    gradient_checkpointing: bool = False  # for large models on one GPU
    max_grad_norm: float = 1.0

    def __post_init__(self):
        positive = {"rank": self.rank, "alpha": self.alpha, "epochs": self.epochs, "learning_rate": self.learning_rate,
                    "batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size, "max_length": self.max_length}
        bad = [k for k, v in positive.items() if not v > 0]
        if bad:
            raise ValueError(f"LoRA settings must be positive: {', '.join(bad)}")
        if not 0 <= self.dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("dropout and warmup_ratio must lie in [0, 1)")
        choices = {"schedule": ("linear", "cosine", "constant", "constant_with_warmup"), "format": ("tulu", "chat_template"), "dtype": ("auto", "float32", "bfloat16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def identity(self) -> dict:
        """What the trained weights depend on (cache keys, metadata)."""
        d = asdict(self)
        d["target_modules"] = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return d


# --------------------------------------------------------------------------- formatting and masks


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_label_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def tulu_text(messages: Sequence[dict], eos: str) -> str:
    """open-instruct's `_concat_messages` (not stripped)."""
    parts = []
    for m in messages:
        role = m["role"]
        if role not in TULU_HEADERS:
            raise ValueError(f"invalid role {role!r}: expected system, user or assistant")
        parts.append(TULU_HEADERS[role] + m["content"].strip() + (eos if role == "assistant" else "") + "\n")
    return "".join(parts)


def _n_tokens(tokenizer, text: str, max_length: int, special: bool = True) -> int:
    return len(tokenizer(text, add_special_tokens=special, truncation=True, max_length=max_length).input_ids)


def encode_conversation(tokenizer, messages: Sequence[dict], max_length: int, format: str = "tulu") -> Encoded:
    """Input ids and labels of one conversation, the loss on assistant turns only (module docstring)."""
    if not messages:
        raise ValueError("a conversation needs at least one message")
    if format == "tulu":
        eos = tokenizer.eos_token or ""
        render = lambda ms, header: tulu_text(ms, eos) + (TULU_HEADERS["assistant"] if header else "")  # noqa: E731
        ids = tokenizer(tulu_text(messages, eos).strip(), truncation=True, max_length=max_length).input_ids
        special = True
    elif format == "chat_template":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("format chat_template: the tokenizer has no chat template")
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        render = lambda ms, header: tokenizer.apply_chat_template(list(ms), tokenize=False, add_generation_prompt=header) if ms else ""  # noqa: E731
        ids = tokenizer(render(msgs, False), add_special_tokens=False, truncation=True, max_length=max_length).input_ids
        messages, special = msgs, False  # the template writes its own special tokens
    else:
        raise ValueError(f"unknown format {format!r}: tulu or chat_template")
    labels = list(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else _n_tokens(tokenizer, render(messages[:i], False), max_length, special)
        header = i + 1 < len(messages) and messages[i + 1]["role"] == "assistant"
        end = _n_tokens(tokenizer, render(messages[: i + 1], header), max_length, special)
        labels[start:end] = [IGNORE] * len(labels[start:end])
        if end >= max_length:
            break
    return Encoded(list(ids), labels)


def encode_prompt_completion(tokenizer, prompt: str, completion: str, max_length: int, add_eos: bool = True) -> Encoded:
    """TIS `construct_test_sample`: the prompt with special tokens (truncated), the completion
    (+ EOS) without, concatenated; the loss on the completion only."""
    p = tokenizer(prompt, truncation=True, max_length=max_length).input_ids
    c = tokenizer(completion + ((tokenizer.eos_token or "") if add_eos else ""), add_special_tokens=False).input_ids
    ids = (p + c)[:max_length]
    return Encoded(ids, ([IGNORE] * len(p) + c)[:max_length])


def conversation_of(messages: Sequence[dict], system_prompt: str | None = None) -> list[dict]:
    """A pool row's turns as plain dicts, its system prompt (if any) first."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and not (turns and turns[0]["role"] == "system"):
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def pad_batch(rows: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 on padding)."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------- LoRA


def resolve_target_modules(settings: LoraSettings, model_name: str) -> str | list[str]:
    if settings.target_modules != "auto":
        return settings.target_modules if isinstance(settings.target_modules, str) else list(settings.target_modules)
    return ["q_proj", "k_proj", "v_proj", "o_proj"] if "llama" in model_name.lower() else "all-linear"


def pick_dtype(setting: str, device: str) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, setting)


@dataclass
class EpochCheckpoint:
    epoch: int
    step: int
    adapter_dir: str  # holds adapter_model.safetensors and adapter_config.json
    optimizer_path: str | None  # optimizer.safetensors, when saved
    mean_learning_rate: float  # average logged LR over the epoch's steps (LESS's checkpoint weights)
    mean_loss: float


@dataclass
class TrainResult:
    checkpoints: list[EpochCheckpoint]
    losses: list[dict]  # one per optimizer step: step, epoch, loss, learning_rate
    n_rows: int  # rows trained on
    n_dropped: int  # rows whose labels were all masked after truncation
    train_tokens: int  # non-padding tokens seen, all epochs
    label_tokens: int  # tokens under the loss, all epochs
    seconds: float
    device: str
    target_modules: str | list[str]
    trainable_parameters: int
    settings: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def final_adapter(self) -> str:
        return self.checkpoints[-1].adapter_dir


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[Encoded]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i].input_ids, "labels": self.rows[i].labels}


def save_adam_state(optimizer, model, path: Path) -> None:
    """The AdamW moments of every trainable parameter, by parameter name, as safetensors."""
    from safetensors.torch import save_file

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    tensors, step = {}, 0
    for name, p in model.named_parameters():
        state = inner.state.get(p)
        if not p.requires_grad or not state:
            continue
        tensors[f"{name}.exp_avg"] = state["exp_avg"].detach().float().cpu().contiguous()
        tensors[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().float().cpu().contiguous()
        step = int(state["step"]) if "step" in state else step
    save_file(tensors, str(path), metadata={"step": str(step), "betas": json.dumps(inner.param_groups[0].get("betas"))})


PEFT_PREFIX = "base_model.model."  # PeftModel.named_parameters() = this + the wrapped model's names


def load_adam_state(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{parameter name: (exp_avg, exp_avg_sq)} from `optimizer.safetensors`, named as in the model
    that `adapter_applied` yields (the PEFT wrapper's "base_model.model." prefix dropped)."""
    from safetensors.torch import load_file

    flat = load_file(str(path))
    names = [k[: -len(".exp_avg")] for k in flat if k.endswith(".exp_avg")]
    return {n.removeprefix(PEFT_PREFIX): (flat[f"{n}.exp_avg"], flat[f"{n}.exp_avg_sq"]) for n in names}


def train_lora(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    settings: LoraSettings,
    out_dir: str | Path,
    *,
    model_name: str = "",
    save_optimizer: bool = False,
    device: str | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters of `model` on `conversations` (lists of {role, content}); one adapter
    (and optionally its Adam state) per epoch under `out_dir/epoch-<k>/`. `model` is left as it came
    (its LoRA layers are removed at the end). `model_name` feeds the "auto" target-module rule."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoded = [encode_conversation(tokenizer, c, settings.max_length, settings.format) for c in conversations]
    kept = [e for e in encoded if e.n_label_tokens > 0]
    if not kept:
        raise ValueError(f"nothing to train on: {len(encoded)} rows, none with an assistant token within max_length {settings.max_length}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    dtype = pick_dtype(settings.dtype, device)
    model.to(device=device, dtype=dtype)
    targets = resolve_target_modules(settings, model_name or getattr(model.config, "_name_or_path", ""))
    set_seed(settings.seed)  # LoRA A's initialization
    lora = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    if settings.gradient_checkpointing:
        peft_model.enable_input_require_grads()

    accumulation = settings.batch_size // settings.micro_batch_size
    steps_per_epoch = math.ceil(math.ceil(len(kept) / settings.micro_batch_size) / accumulation)
    total_steps = steps_per_epoch * settings.epochs
    extra = {}
    if settings.group_by_length:  # transformers 5 names; 4.x spelled them group_by_length, gradient_checkpointing
        extra["train_sampling_strategy"] = "group_by_length"
    if settings.gradient_checkpointing:
        extra["activation_checkpointing"] = True
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.schedule,
        warmup_steps=math.ceil(total_steps * settings.warmup_ratio),
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        optim="adamw_torch",
        seed=settings.seed,
        data_seed=settings.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not device.startswith("cuda"),
        **extra,
    )
    checkpoints: list[EpochCheckpoint] = []

    class SaveEachEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            epoch = len(checkpoints) + 1
            folder = out / f"epoch-{epoch}"
            peft_model.save_pretrained(folder, safe_serialization=True)
            opt_path = None
            if save_optimizer:
                opt_path = folder / OPTIMIZER_FILE
                save_adam_state(optimizer, peft_model, opt_path)
            logs = [h for h in state.log_history if "loss" in h and epoch - 1 < h.get("epoch", 0) <= epoch + 1e-9]
            checkpoints.append(EpochCheckpoint(
                epoch, state.global_step, str(folder), str(opt_path) if opt_path else None,
                float(np.mean([h["learning_rate"] for h in logs])) if logs else float("nan"),
                float(np.mean([h["loss"] for h in logs])) if logs else float("nan"),
            ))

    trainer = Trainer(model=peft_model, args=args, train_dataset=_Rows(kept), data_collator=lambda b: pad_batch(
        [Encoded(x["input_ids"], x["labels"]) for x in b], pad_id), callbacks=[SaveEachEpoch()])
    for noisy in (PrinterCallback, ProgressCallback):  # the loss curve is returned, not printed
        trainer.remove_callback(noisy)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    start = time.perf_counter()
    try:
        trainer.train()
        seconds = time.perf_counter() - start
        losses = [{"step": h["step"], "epoch": h["epoch"], "loss": h["loss"], "learning_rate": h["learning_rate"]}
                  for h in trainer.state.log_history if "loss" in h and "learning_rate" in h]
    finally:
        peft_model.unload()  # hand the base model back without LoRA layers
        model.eval()
    result = TrainResult(
        checkpoints=checkpoints, losses=losses, n_rows=len(kept), n_dropped=len(encoded) - len(kept),
        train_tokens=settings.epochs * sum(len(e.input_ids) for e in kept),
        label_tokens=settings.epochs * sum(e.n_label_tokens for e in kept),
        seconds=seconds, device=device, target_modules=targets, trainable_parameters=trainable,
        settings=settings.identity(),
    )
    (out / "training_log.json").write_text(json.dumps({**asdict(result), "tokens_per_second": result.tokens_per_second}, indent=1))
    return result


@contextmanager
def adapter_applied(model, adapter_dir: str | Path | None):
    """`model` with the adapter in `adapter_dir` attached (eval mode) inside the block, and without it
    after; None yields the base model itself (the zero-shot baseline). PEFT injects the LoRA layers
    into `model`'s own modules, so what is yielded is the plain transformers model (usable where a
    PreTrainedModel is expected: lm-eval, the token-loss engine), adapter active."""
    if adapter_dir is None:
        yield model.eval()
        return
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    try:
        yield peft_model.get_base_model().eval()
    finally:
        peft_model.unload()
