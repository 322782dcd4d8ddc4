"""Query sets for targeted selection (research/targeted.md §6.2): (task, prompt, answer) rows built as
the RDS/LESS query builders build them, from the public files in ../shared/data (or the sample
shipped in curation_assets/query_sets), or from any pool file.

- bbh (RDS BBHShots): each task's cot-prompts file (its first two lines, the canary and a rule,
  dropped), split at "\\n\\nQ:"; prompt = the task description + "\\n\\nQ:" + the question, answer =
  the exemplar's CoT after "\\nA: ". 3 per task, 81 for 27 tasks. Not chat-formatted, as in RDS.
- gsm8k (RDS GSM8KShots' format): tulu user turn "Answer the following question.\\n\\nQuestion: {q}"
  + "<|assistant|>\\n" + "Answer:"; answer = the worked solution with its calculator annotations
  <<...>> removed and "#### X" written as "So the answer is X." (RDS uses Wei et al.'s 8 exemplars,
  whose answers read that way; the GSM8K files hold other questions: PROPOSAL).
- mmlu (LESS get_validation_dataset.py): "The following are multiple choice questions (with
  answers) about {subject}.\\n\\n{q}\\nA. ..\\nD. ..\\nAnswer:" in a tulu user turn, the assistant
  turn opened with "The answer is:", answer " {letter}". 5 dev rows per subject.
- mbpp / humaneval (PROPOSAL, the codex set's exact HumanEvalPack prompts are HF-only): the task
  text (and MBPP's tests) in a tulu user turn, the reference solution as the answer.
- file: any file raw_pool reads; the prompt is the tulu rendering of every turn before the last
  assistant turn, plus "<|assistant|>\\n"; the answer is that last turn.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

from curation_assets.methods.lora_training import tulu_text

SOURCES = ("bbh", "gsm8k", "mmlu", "mbpp", "humaneval", "file")
BUNDLED = Path(__file__).resolve().parents[1] / "query_sets"


def _user_prompt(text: str, opener: str = "") -> str:
    return tulu_text([{"role": "user", "content": text}], "") + "<|assistant|>\n" + opener


def bbh_queries(folder: Path) -> list[tuple[str, str, str]]:
    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise ValueError(f"no BBH cot-prompts *.txt in {folder}")
    out = []
    for f in files:
        text = "".join(f.read_text().splitlines(keepends=True)[2:])
        head, *questions = text.split("\n\nQ:")
        for q in questions:
            if "\nA: " not in q:
                raise ValueError(f"{f.name}: an exemplar without '\\nA: '")
            question, answer = q.split("\nA: ", 1)
            out.append((f"bbh/{f.stem}", head + "\n\nQ:" + question, answer))
    return out


def gsm8k_answer(solution: str) -> str:
    body, _, final = solution.partition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body} So the answer is {final.strip()}." if final else body


def gsm8k_queries(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in _text(path).splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(("gsm8k", _user_prompt("Answer the following question.\n\nQuestion: " + row["question"].strip()) + "Answer:", gsm8k_answer(row["answer"])))
    return out


def mmlu_queries(folder: Path) -> list[tuple[str, str, str]]:
    files = sorted(Path(folder).glob("*_dev.csv"))
    if not files:
        raise ValueError(f"no MMLU *_dev.csv in {folder}")
    out = []
    for f in files:
        subject = f.stem[: -len("_dev")]
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                choices = "".join(f"\n{letter}. {row[f'choice{i}']}" for i, letter in enumerate("ABCD"))
                prompt = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n{row['question']}{choices}\nAnswer:"
                out.append((f"mmlu/{subject}", _user_prompt(prompt, "The answer is:"), " " + "ABCD"[int(row["answer"])]))
    return out


def mbpp_queries(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in _text(path).splitlines():
        if line.strip():
            row = json.loads(line)
            tests = "\n".join(row.get("test_list", []))
            out.append(("mbpp", _user_prompt(f"{row['text'].strip()}\nYour code should pass these tests:\n{tests}"), row["code"].replace("\r\n", "\n")))
    return out


def humaneval_queries(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in _text(path).splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(("humaneval", _user_prompt("Complete the following python function.\n\n\n" + row["prompt"]) + row["prompt"], row["canonical_solution"]))
    return out


def conversation_queries(task: str, conversations: list[list[dict]]) -> list[tuple[str, str, str]]:
    out = []
    for turns in conversations:
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
        if last is None:
            continue
        out.append((task, tulu_text(turns[:last], "") + "<|assistant|>\n", turns[last]["content"]))
    return out


def _text(path: Path) -> str:
    path = Path(path)
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


BUILDERS = {"bbh": bbh_queries, "gsm8k": gsm8k_queries, "mmlu": mmlu_queries, "mbpp": mbpp_queries, "humaneval": humaneval_queries}
