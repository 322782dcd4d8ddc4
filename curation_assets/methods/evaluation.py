"""Target-task evaluation of a causal LM (a base model, or one with a LoRA adapter attached):
the held-out answer loss and task accuracy through EleutherAI's lm-eval harness, on local files.

Evaluation sets are read from a folder laid out as ../shared/data/raw (MANIFEST.md) - the same
layout as the small samples shipped in curation_assets/eval_data/:

| task | file(s) | accuracy (lm-eval) | answer for the loss |
|---|---|---|---|
| gsm8k | gsm8k/test.jsonl | greedy answer, last number = the gold number after "####" | the worked solution, "So the answer is N." |
| mmlu | mmlu/test/<subject>_test.csv | log-likelihood of " A".." D" (acc) | " <letter>" |
| bbh | bbh/bbh/<task>.json | greedy answer (after "So the answer is", if any) = target | the target |
| humaneval | humaneval/HumanEval.jsonl.gz | pass@1 of the greedy completion, only with code execution on | the canonical solution |
| mbpp | mbpp/mbpp.jsonl (task_id 11-510, its test split) | pass@1, only with code execution on | the reference code |

Prompts follow the training format (lora_training): `tulu` renders "<|user|>\\n{question}\\n<|assistant|>\\n"
plus an answer prefix (TIS evaluates its fine-tunes in this chat format; MMLU's "The answer is:"
is LESS's chat form), `chat_template` the tokenizer's template with the generation prompt.
Examples are a seeded sample of `limit` per task (spread over MMLU subjects and BBH tasks); the
loss and the accuracy use the same examples. No data set is fetched from a hub: lm-eval receives
the documents through `custom_dataset`.

Answer loss: the mean token NLL of answer + EOS given the prompt (research/targeted.md §2,
TIS `construct_test_sample`), over all answer tokens of the task (token-weighted), and the mean
of per-example means (TIS `ce_loss.py`).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curation_assets.methods.lora_training import TULU_HEADERS, encode_prompt_completion
from curation_assets.methods.token_losses import LossRequest, token_losses

VERSION = "1"
TASKS = ("gsm8k", "mmlu", "bbh", "humaneval", "mbpp")
CODE_TASKS = ("humaneval", "mbpp")
PACKAGED = Path(__file__).resolve().parents[1] / "eval_data"
LETTERS = "ABCD"


@dataclass
class Example:
    task: str
    group: str  # MMLU subject, BBH task, or the task name
    question: str  # the user turn
    answer_prefix: str  # start of the assistant turn (e.g. "The answer is:")
    answer: str  # gold continuation for the loss
    target: str  # gold for accuracy (a number, a letter, a BBH target, or the code's tests)
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- local files


def _gsm8k(root: Path) -> list[Example]:
    out = []
    for line in (root / "gsm8k" / "test.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        rationale, _, gold = d["answer"].rpartition("####")
        gold = gold.strip().replace(",", "")
        out.append(Example("gsm8k", "gsm8k", f"Answer the following question.\n\nQuestion: {d['question']}", "Answer:",
                           " " + re.sub(r"<<[^>]*>>", "", rationale).strip() + f" So the answer is {gold}.", gold))
    return out


def _mmlu(root: Path) -> list[Example]:
    out = []
    for path in sorted((root / "mmlu" / "test").glob("*_test.csv")):
        subject = path.name[: -len("_test.csv")]
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                choices = [row[f"choice{i}"] for i in range(4)]
                letter = LETTERS[int(row["answer"])]
                body = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
                q = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n{row['question']}\n{body}\nAnswer:"
                out.append(Example("mmlu", subject, q, "The answer is:", f" {letter}", letter))
    return out


def _bbh(root: Path, cot: bool) -> list[Example]:
    out = []
    for path in sorted((root / "bbh" / "bbh").glob("*.json")):
        name = path.stem
        header = ""
        if cot:  # the task's official 3-shot CoT prompt (cot-prompts/<task>.txt, after its canary line)
            text = (root / "bbh" / "cot-prompts" / f"{name}.txt").read_text()
            header = text.split("-----", 1)[-1].strip() + "\n\n"
        for d in json.loads(path.read_text())["examples"]:
            out.append(Example("bbh", name, f"{header}Q: {d['input']}", "A:", f" {d['target']}", d["target"]))
    return out


def _humaneval(root: Path) -> list[Example]:
    with gzip.open(root / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [
        Example("humaneval", "humaneval", f"Complete the following Python function.\n\n{d['prompt']}", d["prompt"], d["canonical_solution"],
                d["test"] + f"\ncheck({d['entry_point']})\n", {"program_prefix": d["prompt"]})
        for d in rows
    ]


def _mbpp(root: Path) -> list[Example]:
    out = []
    for line in (root / "mbpp" / "mbpp.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        if not 11 <= int(d["task_id"]) <= 510:  # MBPP's test split
            continue
        tests = "\n".join(d["test_list"])
        out.append(Example("mbpp", "mbpp", f"{d['text']}\nYour code should pass these tests:\n{tests}", "", " " + d["code"].replace("\r\n", "\n").strip(),
                           (d.get("test_setup_code") or "") + "\n" + tests + "\n", {"program_prefix": ""}))
    return out


def load_examples(root: str | Path, task: str, limit: int | None, seed: int = 0, bbh_cot: bool = False,
                  exclude_questions: set[str] | None = None) -> list[Example]:
    """A seeded sample of `limit` examples of `task` (all when None), spread evenly over its groups;
    examples whose question text is in `exclude_questions` (e.g. the selection's target prompts) are left out."""
    root = Path(root)
    loaders = {"gsm8k": _gsm8k, "mmlu": _mmlu, "bbh": lambda r: _bbh(r, bbh_cot), "humaneval": _humaneval, "mbpp": _mbpp}
    if task not in loaders:
        raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    try:
        examples = loaders[task](root)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"evaluation set {task} not found under {root}: {exc.filename}") from exc
    if exclude_questions:
        examples = [e for e in examples if _norm(e.question.rsplit("Question: ", 1)[-1]) not in exclude_questions]
    if not examples:
        raise ValueError(f"evaluation set {task} under {root} holds no examples")
    if limit is None or limit >= len(examples):
        return examples
    rng = random.Random(seed)
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.group, []).append(e)
    for g in groups.values():
        rng.shuffle(g)
    picked, i = [], 0  # round-robin over the groups, in name order
    names = sorted(groups)
    while len(picked) < limit:
        for name in names:
            if i < len(groups[name]) and len(picked) < limit:
                picked.append(groups[name][i])
        i += 1
    return picked


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def normalized_questions(texts) -> set[str]:
    return {_norm(t) for t in texts}


# --------------------------------------------------------------------------- prompts


def render_prompt(tokenizer, example: Example, format: str) -> str:
    """The context the model continues: the user turn and the start of the assistant turn."""
    if format == "tulu":
        return TULU_HEADERS["user"] + example.question.strip() + "\n" + TULU_HEADERS["assistant"] + example.answer_prefix
    if format == "chat_template":
        return tokenizer.apply_chat_template([{"role": "user", "content": example.question}], tokenize=False, add_generation_prompt=True) + example.answer_prefix
    raise ValueError(f"unknown format {format!r}: tulu or chat_template")


# --------------------------------------------------------------------------- answer loss


def answer_loss(model, tokenizer, examples: list[Example], format: str, max_length: int = 2048, token_budget: int | None = None) -> dict:
    """Per-token NLL of the gold answers (+ EOS) given their prompts."""
    encoded = []
    for e in examples:
        prompt = render_prompt(tokenizer, e, format)
        if format == "chat_template":  # the template wrote its own special tokens
            p = tokenizer(prompt, add_special_tokens=False).input_ids
            c = tokenizer(e.answer + (tokenizer.eos_token or ""), add_special_tokens=False).input_ids
            encoded.append(((p + c)[:max_length], len(p)))
        else:
            enc = encode_prompt_completion(tokenizer, prompt, e.answer, max_length)
            encoded.append((enc.input_ids, len(enc.input_ids) - enc.n_label_tokens))
    start = time.perf_counter()
    losses = token_losses(model, [LossRequest(ids, p, len(ids)) for ids, p in encoded], token_budget=token_budget)
    seconds = time.perf_counter() - start
    scored = [x for x in losses if len(x)]
    tokens = int(sum(len(x) for x in scored))
    return {
        "answer_loss": float(np.concatenate(scored).mean()) if scored else float("nan"),
        "answer_loss_per_example": float(np.mean([x.mean() for x in scored])) if scored else float("nan"),
        "answer_tokens": tokens,
        "loss_examples": len(scored),
        "loss_seconds": seconds,
        "loss_tokens_per_second": sum(len(ids) for ids, _ in encoded) / seconds if seconds > 0 else float("nan"),
    }


# --------------------------------------------------------------------------- accuracy (lm-eval)


def last_number(text: str) -> str | None:
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def _same_number(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def bbh_answer(text: str) -> str:
    text = text.strip()
    if "So the answer is" in text:
        text = text.rsplit("So the answer is", 1)[1]
    return text.strip().split("\n")[0].strip().rstrip(".").strip()


def run_program(program: str, timeout: float) -> bool:
    """Run a completed program with its tests in a fresh Python process; True when it exits 0."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.py"
        path.write_text(program)
        try:
            done = subprocess.run([sys.executable, str(path)], cwd=tmp, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def code_completion(text: str) -> str:
    """The code of a generation: inside its first ``` block if it opens one, else up to a closing fence."""
    if "```" in text:
        parts = text.split("```")
        body = parts[1] if text.lstrip().startswith("```") or len(parts) > 2 else parts[0]
        return re.sub(r"^(python|py)\n", "", body)
    return text


def _task_config(task: str, docs: list[dict], *, max_new_tokens: int, code_execution: bool, code_timeout: float) -> dict:
    import datasets

    def dataset(**_):
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})

    base = {
        "task": f"curation_{task}",
        "custom_dataset": dataset,
        "test_split": "test",
        "doc_to_text": lambda d: d["prompt"],
        "metadata": {"version": VERSION},
    }
    if task == "mmlu":
        return {**base, "output_type": "multiple_choice", "doc_to_target": lambda d: LETTERS.index(d["target"]),
                "doc_to_choice": list(LETTERS), "target_delimiter": " ",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    stops = ["<|user|>", "<|system|>", "\n\n\n"] if task in CODE_TASKS else ["\n\n", "<|user|>", "Question:", "Q:"]
    if task == "gsm8k":
        judge = lambda d, out: _same_number(last_number(out), d["target"])  # noqa: E731
    elif task == "bbh":
        judge = lambda d, out: bbh_answer(out) == d["target"]  # noqa: E731
    else:
        judge = lambda d, out: code_execution and run_program(d["program_prefix"] + code_completion(out) + "\n\n" + d["target"], code_timeout)  # noqa: E731

    def process_results(doc, results):
        return {"exact_match": float(judge(doc, results[0]))}

    return {**base, "output_type": "generate_until", "doc_to_target": lambda d: d["target"], "process_results": process_results,
            "generation_kwargs": {"until": stops, "do_sample": False, "max_gen_toks": max_new_tokens},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]}


def accuracy(model, tokenizer, task: str, examples: list[Example], format: str, *, batch_size: int = 8, max_new_tokens: int = 256,
             max_length: int = 2048, code_execution: bool = False, code_timeout: float = 10.0, seed: int = 0) -> dict:
    """Task accuracy through lm-eval's harness (HFLM over the loaded model); None for code tasks
    while code execution is off."""
    if task in CODE_TASKS and not code_execution:
        return {"accuracy": None, "metric": "pass@1 (code execution off)", "accuracy_seconds": 0.0}
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    docs = [{"prompt": render_prompt(tokenizer, e, format), "target": e.target, "program_prefix": e.extra.get("program_prefix", "")} for e in examples]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, add_bos_token=format == "tulu")
    config = _task_config(task, docs, max_new_tokens=max_new_tokens, code_execution=code_execution, code_timeout=code_timeout)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[config], task_manager=TaskManager(include_defaults=False), num_fewshot=0, log_samples=False,
                                  bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                  verbosity="ERROR")
    metric = "acc" if task == "mmlu" else "exact_match"
    value = out["results"][config["task"]][f"{metric},none"]
    names = {"mmlu": "accuracy (log-likelihood of A-D)", "gsm8k": "exact match (last number)", "bbh": "exact match"}
    return {"accuracy": float(value), "metric": names.get(task, "pass@1 (greedy)"), "accuracy_seconds": time.perf_counter() - start}
