"""methods/export.py: a subset written as Alpaca, ShareGPT, OpenAI messages and Parquet, in rank
order, every record carrying its row_id."""

import json

import polars as pl
import pytest

from curation_assets.methods.export import alpaca_record, export_subset, openai_record, sharegpt_record

SINGLE = {"row_id": "r1", "instruction": "Add 2 and 3.", "input": "Use digits.", "response": "5", "system_prompt": None,
          "messages": [{"role": "user", "content": "Add 2 and 3.\nUse digits."}, {"role": "assistant", "content": "5"}]}
MULTI = {"row_id": "r2", "instruction": "Hi", "input": "", "response": "Bye!", "system_prompt": "Be brief.",
         "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}


def test_alpaca_keeps_instruction_and_input_or_puts_earlier_turns_in_history():
    assert alpaca_record(SINGLE) == {"id": "r1", "instruction": "Add 2 and 3.", "input": "Use digits.", "output": "5"}
    assert alpaca_record(MULTI) == {"id": "r2", "instruction": "Bye", "input": "", "output": "Bye!", "system": "Be brief.", "history": [["Hi", "Hello"]]}


def test_sharegpt_and_openai_records():
    assert sharegpt_record(MULTI) == {"id": "r2", "system": "Be brief.", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]}
    assert openai_record(MULTI)["messages"][0] == {"role": "system", "content": "Be brief."} and len(openai_record(MULTI)["messages"]) == 5
    assert openai_record(SINGLE) == {"id": "r1", "messages": SINGLE["messages"]}


def test_export_subset_writes_every_format_in_rank_order(tmp_path):
    subset = pl.DataFrame([{**MULTI, "rank": 2}, {**SINGLE, "rank": 1}])
    written = export_subset(subset, tmp_path / "out")
    assert sorted(written) == ["alpaca", "openai", "parquet", "sharegpt"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["alpaca.json", "openai_messages.jsonl", "sharegpt.json", "subset.parquet"]
    assert [r["id"] for r in json.loads(written["alpaca"].read_text())] == ["r1", "r2"]
    assert [json.loads(line)["id"] for line in written["openai"].read_text().splitlines()] == ["r1", "r2"]
    assert [r["id"] for r in json.loads(written["sharegpt"].read_text())] == ["r1", "r2"]
    assert pl.read_parquet(written["parquet"]).equals(subset)
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        export_subset(subset, tmp_path / "other", ["alpaca", "csv"])
