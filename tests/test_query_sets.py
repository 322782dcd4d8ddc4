"""methods/query_sets.py: the query builders (BBH, GSM8K, MMLU, MBPP, HumanEval, any conversation)
on tiny files written here, each answer worked out by hand."""

import csv
import gzip
import json

import pytest

from curation_assets.methods.query_sets import (
    bbh_queries, conversation_queries, gsm8k_answer, gsm8k_queries, humaneval_queries, mbpp_queries, mmlu_queries,
)


def test_gsm8k_answer_drops_calculator_annotations_and_states_the_answer():
    assert gsm8k_answer("She sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "She sold 48/2 = 24 clips. So the answer is 72."
    assert gsm8k_answer("No final line.") == "No final line."


def test_gsm8k_queries_from_gzipped_json_lines(tmp_path):
    path = tmp_path / "test.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps({"question": " How many? ", "answer": "Two <<1+1=2>>.\n#### 2"}) + "\n\n").encode()))
    assert gsm8k_queries(path) == [("gsm8k", "<|user|>\nAnswer the following question.\n\nQuestion: How many?\n<|assistant|>\nAnswer:", "Two . So the answer is 2.")]


def test_bbh_drops_the_two_header_lines_and_splits_the_exemplars(tmp_path):
    (tmp_path / "dates.txt").write_text("canary GUID\n-----\nInfer the date.\n\nQ: What is 1+1?\nA: Let's think. 2.\n\nQ: And 2+2?\nA: 4.")
    assert bbh_queries(tmp_path) == [
        ("bbh/dates", "Infer the date.\n\nQ: What is 1+1?", "Let's think. 2."),
        ("bbh/dates", "Infer the date.\n\nQ: And 2+2?", "4."),
    ]
    (tmp_path / "broken.txt").write_text("a\nb\nTask.\n\nQ: no answer here")
    with pytest.raises(ValueError, match="broken.txt"):
        bbh_queries(tmp_path)
    with pytest.raises(ValueError, match="no BBH"):
        bbh_queries(tmp_path / "missing")


def test_mmlu_prompt_lists_the_choices_and_answers_with_a_letter(tmp_path):
    with (tmp_path / "abstract_algebra_dev.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        w.writeheader()
        w.writerow({"question": "Order of Z_4?", "choice0": "1", "choice1": "2", "choice2": "4", "choice3": "8", "answer": "2"})
    [(task, prompt, answer)] = mmlu_queries(tmp_path)
    assert task == "mmlu/abstract_algebra" and answer == " C"
    assert prompt == ("<|user|>\nThe following are multiple choice questions (with answers) about abstract algebra.\n\n"
                      "Order of Z_4?\nA. 1\nB. 2\nC. 4\nD. 8\nAnswer:\n<|assistant|>\nThe answer is:")


def test_code_tasks_put_the_task_in_a_user_turn_and_the_solution_as_answer(tmp_path):
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(json.dumps({"text": "Add two numbers.", "code": "def add(a, b):\r\n    return a + b", "test_list": ["assert add(1, 2) == 3"]}) + "\n")
    assert mbpp_queries(mbpp) == [("mbpp", "<|user|>\nAdd two numbers.\nYour code should pass these tests:\nassert add(1, 2) == 3\n<|assistant|>\n",
                                   "def add(a, b):\n    return a + b")]
    he = tmp_path / "humaneval.jsonl"
    he.write_text(json.dumps({"prompt": "def f():\n", "canonical_solution": "    return 1\n"}) + "\n")
    assert humaneval_queries(he) == [("humaneval", "<|user|>\nComplete the following python function.\n\n\ndef f():\n<|assistant|>\ndef f():\n", "    return 1\n")]


def test_conversation_queries_answer_with_the_last_assistant_turn():
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"}]
    no_answer = [{"role": "user", "content": "Anyone?"}]
    assert conversation_queries("chat", [turns, no_answer]) == [
        ("chat", "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello\n<|user|>\nBye\n<|assistant|>\n", "Goodbye"),
    ]
