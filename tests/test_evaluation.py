"""Target-task evaluation on the tiny local task files: readers, samples, answer loss, lm-eval accuracy."""

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from curation_assets.methods import evaluation

TINY = Path(__file__).parent / "fixtures" / "tiny_llama"


def test_evaluation_sets_read_from_local_files(tmp_path):
    examples = evaluation.load_examples(evaluation.PACKAGED, "mmlu", 10, seed=1)
    assert len(examples) == 10 and len({e.group for e in examples}) == 10  # spread over subjects
    assert examples == evaluation.load_examples(evaluation.PACKAGED, "mmlu", 10, seed=1)
    gsm = evaluation.load_examples(evaluation.PACKAGED, "gsm8k", None)
    assert all(e.target.lstrip("-").replace(".", "").isdigit() for e in gsm) and "####" not in gsm[0].answer
    excluded = evaluation.load_examples(evaluation.PACKAGED, "gsm8k", None, exclude_questions=evaluation.normalized_questions([gsm[0].question.split("Question: ")[1]]))
    assert len(excluded) == len(gsm) - 1
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        evaluation.load_examples(tmp_path, "gsm8k", 5)
    assert evaluation.last_number("so 1,234 apples. The answer is 1,250.") == "1250"
    assert evaluation.bbh_answer(" Let's think. So the answer is (B).") == "(B)"
    assert evaluation.run_program("assert 1 + 1 == 2\n", 10) and not evaluation.run_program("assert False\n", 10)



def test_answer_loss_and_lm_eval_accuracy_on_a_tiny_model():
    model, tok = AutoModelForCausalLM.from_pretrained(TINY).eval(), AutoTokenizer.from_pretrained(TINY)
    mmlu = evaluation.load_examples(evaluation.PACKAGED, "mmlu", 4)
    loss = evaluation.answer_loss(model, tok, mmlu, "tulu")
    assert loss["answer_tokens"] == 2 * 4 and loss["loss_examples"] == 4  # " X" + EOS per example
    assert loss["answer_loss"] > 0 and loss["loss_tokens_per_second"] > 0
    acc = evaluation.accuracy(model, tok, "mmlu", mmlu, "tulu", batch_size=4)
    assert acc["accuracy"] in {0, 0.25, 0.5, 0.75, 1}
    gsm = evaluation.load_examples(evaluation.PACKAGED, "gsm8k", 2)
    assert evaluation.accuracy(model, tok, "gsm8k", gsm, "tulu", max_new_tokens=4)["accuracy"] == 0.0  # random weights
    assert evaluation.accuracy(model, tok, "mbpp", gsm, "tulu")["accuracy"] is None  # code execution off
    assert evaluation.render_prompt(tok, mmlu[0], "chat_template").endswith("<|start_header_id|>assistant<|end_header_id|>\n\nThe answer is:")
