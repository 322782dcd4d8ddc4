"""query_set.py: the query_set asset and its builder over the bundled sample and any pool file."""

import json

import dagster as dg
import polars as pl
import pytest

from curation_assets.query_set import QueryTask, build_query_rows, query_set


def test_query_set_builders_and_bundled_sample():
    rows = build_query_rows([QueryTask(source="bbh"), QueryTask(source="gsm8k"), QueryTask(source="mmlu", limit=4)])
    assert rows["query_id"].to_list() == list(range(rows.height))
    bbh = rows.filter(pl.col("task").str.starts_with("bbh/"))
    assert bbh.height == 9 and bbh["answer"].str.starts_with("Let's think step by step.").all()
    assert "canary" not in " ".join(bbh["prompt"].to_list()) and bbh["prompt"].str.contains("\n\nQ:").all()
    gsm = rows.filter(pl.col("task") == "gsm8k")
    assert gsm.height == 8 and gsm["prompt"].str.ends_with("<|assistant|>\nAnswer:").all()
    assert gsm["answer"][0].endswith("So the answer is 18.") and "<<" not in gsm["answer"][0]
    mmlu = rows.filter(pl.col("task").str.starts_with("mmlu/"))
    assert mmlu.height == 4 and mmlu["prompt"].str.ends_with("<|assistant|>\nThe answer is:").all() and mmlu["answer"].is_in([" A", " B", " C", " D"]).all()
    with pytest.raises(dg.Failure, match="not one of"):
        build_query_rows([QueryTask(source="nope")])


def test_a_pool_file_is_a_task_and_bad_tasks_fail_clearly(tmp_path):
    path = tmp_path / "support.jsonl"
    path.write_text(json.dumps({"instruction": "Reset my password.", "output": "Open settings."}) + "\n"
                    + json.dumps({"instruction": "Close my account.", "output": "Write to us."}) + "\n")
    rows = build_query_rows([QueryTask(source="file", path=str(path), limit=1), QueryTask(source="file", path=str(path), name="help")])
    assert rows["task"].to_list() == ["support", "help", "help"] and rows["query_id"].to_list() == [0, 1, 2]
    assert rows["prompt"][0] == "<|user|>\nReset my password.\n<|assistant|>\n" and rows["answer"].to_list() == ["Open settings.", "Open settings.", "Write to us."]
    assert rows["source"].unique().to_list() == [str(path)]
    with pytest.raises(dg.Failure, match="does not exist"):
        build_query_rows([QueryTask(source="file", path=str(tmp_path / "nope.jsonl"))])
    with pytest.raises(dg.Failure, match="give its path"):
        build_query_rows([QueryTask(source="mbpp")])


def test_asset_writes_the_queries_with_per_task_metadata(resources, instance):
    result = dg.materialize([query_set], resources=resources, instance=instance,
                            run_config={"ops": {"query_set": {"config": {"tasks": [{"source": "gsm8k", "limit": 3}, {"source": "mmlu", "limit": 2}]}}}})
    assert result.success
    rows = pl.read_parquet(resources["storage"].asset_file("query_set"))
    assert rows.height == 5 and rows["task"].to_list()[:3] == ["gsm8k"] * 3
    meta = result.asset_materializations_for_node("query_set")[0].metadata
    assert meta["dagster/row_count"].value == 5 and meta["tasks"].value == 1 + rows.filter(pl.col("task") != "gsm8k")["task"].n_unique()
