"""IterIT: the greedy complexity x diversity update against the reference, and the TrainerCallback
re-selecting the training subset with the model being fine-tuned."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from curation_assets.methods.ifd import Sample, iterit_ifd
from curation_assets.methods.iterit import IterITCallback, IterITSelection, greedy_order

FIXTURES = Path(__file__).parent / "fixtures"
CASES = json.loads((FIXTURES / "reference" / "selection" / "iterit_update.json").read_text())["cases"]


def inputs(case):
    i = case["inputs"]
    scores = np.array([np.nan if v is None else v for v in i["scores"]], dtype=np.float32)
    return scores, [r + i["eos"] for r in i["responses"]], i


@pytest.mark.parametrize("case", [c for c in CASES if "new_order" in c["outputs"]], ids=lambda c: c["name"])
def test_reference_mode_matches_supervised_dataset_update(case):
    scores, docs, i = inputs(case)
    ours = greedy_order(scores, docs, range(len(scores)), i["count"], i["select_count"], gamma=i["gamma"], score_type=i["score_type"], mask_chosen=False, stable_tail=False)
    assert ours == case["outputs"]["new_order"]


def test_default_mode_never_repeats_and_handles_one_candidate():
    by_name = {c["name"]: c for c in CASES}
    scores, docs, i = inputs(by_name["gamma0_repeats"])
    order = greedy_order(scores, docs, range(len(scores)), i["count"], i["select_count"], gamma=0.0)
    assert sorted(order) == list(range(len(scores)))  # every row once; the reference repeats row 0
    scores, docs, i = inputs(by_name["one_valid_raises"])  # the reference raises TypeError here
    order = greedy_order(scores, docs, range(len(scores)), i["count"], 1)
    valid = [k for k, s in enumerate(scores) if s < 1]
    assert order[0] == valid[0] and len(order) == len([s for s in scores if not np.isnan(s)])
    # Same picks as the reference where it has no repeats.
    scores, docs, i = inputs(by_name["medium_2000"])
    order = greedy_order(scores, docs, range(len(scores)), i["count"], i["select_count"], gamma=i["gamma"])
    assert order[: i["select_count"]] == by_name["medium_2000"]["outputs"]["new_order"][: i["select_count"]]


class Rows(torch.utils.data.Dataset):
    def __init__(self, encoded):
        self.encoded = encoded
        self.fetched = []

    def __len__(self):
        return len(self.encoded)

    def __getitem__(self, i):
        self.fetched.append(i)
        return self.encoded[i]


def test_callback_reselects_each_epoch_with_the_training_model(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tiny_llama")
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny_llama")
    data = json.loads((FIXTURES / "parity_rows.json").read_text())[:20]
    samples = [Sample(r["instruction"], r["input"], r["output"][:200]) for r in data]
    encoded = []
    for s in samples:
        ids = tokenizer(f"{s.instruction}\n{s.output}").input_ids[:96]
        encoded.append({"input_ids": ids, "labels": ids})
    dataset = Rows(encoded)
    selection = IterITSelection(dataset, [s.output for s in samples], tokenizer.eos_token, ratio=0.25, update_ratio=3)
    scored = []

    def score_rows(m, rows):
        values = [r.ifd for r in iterit_ifd(m, tokenizer, [samples[i] for i in rows], max_length=512)]
        scored.append((len(rows), m.training, dict(zip(rows, values))))
        return values

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        pad = lambda x, v: x + [v] * (width - len(x))  # noqa: E731
        return {
            "input_ids": torch.tensor([pad(b["input_ids"], 0) for b in batch]),
            "labels": torch.tensor([pad(b["labels"], -100) for b in batch]),
            "attention_mask": torch.tensor([pad([1] * len(b["input_ids"]), 0) for b in batch]),
        }

    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=5, learning_rate=5e-3,
                             report_to=[], use_cpu=True, dataloader_num_workers=0, save_strategy="no", logging_strategy="no", seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=selection.view, data_collator=collate, callbacks=[IterITCallback(selection, score_rows)])
    fetched_per_epoch = []
    original = selection.update

    def update(epoch, scores_of):
        fetched_per_epoch.append(list(dataset.fetched))
        dataset.fetched.clear()
        original(epoch, scores_of)

    selection.update = update
    trainer.train()
    fetched_per_epoch.append(list(dataset.fetched))

    assert selection.n == 5
    # Epoch 0 scores all 20 rows; epochs 1 and 2 re-score the first 3n = 15, in eval mode.
    assert [n for n, _, _ in scored] == [20, 15, 15] and not any(training for _, training, _ in scored)
    # The scores come from the model as it trains: they move between epochs.
    common = set(scored[0][2]) & set(scored[1][2])
    assert any(abs(scored[0][2][r] - scored[1][2][r]) > 1e-4 for r in common)
    # Each epoch trains on exactly the rows selected before it.
    for history, fetched in zip(selection.history, fetched_per_epoch[1:]):
        assert sorted(fetched) == sorted(history["selected"])
    assert model.training  # training mode restored
