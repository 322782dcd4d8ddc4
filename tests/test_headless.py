"""The headless runner on the demo pool shipped in the project."""

import json
from pathlib import Path

import polars as pl

from curation_assets.shards import pool_rows

from curation_assets.headless import RunConfig, run_graph
from metadata import undescribed_columns

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"


def test_demo_pool_runs_end_to_end_and_incrementally(tmp_path, instance):
    config = RunConfig.load(ROOT / "curation.yaml")
    config.home = str(tmp_path / "home")
    report = run_graph([DEMO / "pool"], config, instance=instance, log=lambda _: None)
    assert len(report.landed) == 7 and all(report.shard_runs.values()) and len(report.shard_runs) == 7

    pool = pl.read_parquet(report.home / "assets" / "raw_pool" / "*.parquet")
    quarantine = pl.read_parquet(report.home / "assets" / "raw_pool_quarantine" / "*.parquet")
    assert set(pool["shape"]) == {"alpaca", "sharegpt", "openai_messages", "question_answer", "prompt_completion"}
    # Two copies of earlier rows (within a file or across files: shards.py decides the canonical one).
    assert pool.height - pool["row_id"].n_unique() == 2 and quarantine.height == 5
    assert pool_rows(pool.lazy()).collect().height == pool["row_id"].n_unique()

    # The global assets ran on the whole pool: every canonical row has tags, most sit on the tree.
    assert report.global_run
    tags = pl.read_parquet(report.home / "assets" / "normalized_tags.parquet")
    tree = pl.read_parquet(report.home / "assets" / "knowledge_tree.parquet")
    members = pl.read_parquet(report.home / "assets" / "tree_memberships.parquet")
    assert tags.height == pool["row_id"].n_unique()
    vocabulary = pl.read_parquet(report.home / "assets" / "tag_vocabulary.parquet")
    # Leaves are leaf concepts (synonymous tags grouped, tag -> leaf kept in tag_vocabulary).
    assert tree.filter(pl.col("is_leaf")).height == vocabulary["tree_leaf"].drop_nulls().n_unique()
    tagged = tags.filter(pl.col("canonical_tags").list.len() > 0).height
    assert members["row_id"].n_unique() >= 0.9 * tagged
    # Every column of every table the run wrote has a description in the UI's column schema.
    assert undescribed_columns(instance) == {}

    # Nothing new: nothing runs. A new file: only its shard runs.
    again = run_graph([DEMO / "pool"], config, instance=instance, log=lambda _: None)
    assert again.shard_runs == {}
    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"prompt": "Name a color.", "completion": "Teal."}) + "\n")
    grown = run_graph([DEMO / "pool", extra], config, instance=instance, log=lambda _: None)
    assert list(grown.shard_runs) == [next(f.partition for f in grown.landed if f.source_path == "more.jsonl")]


def test_open_instance_keeps_everything_under_dagster_home(tmp_path, monkeypatch):
    import shutil

    from curation_assets.headless import open_instance

    shutil.copy(DEMO.parent / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    instance = open_instance()
    ref = instance.get_ref()
    assert ref.run_storage_data.config_dict["base_dir"].startswith(".dagster_home/storage")
    assert ref.compute_logs_data.config_dict["base_dir"] == ".dagster_home/logs"
    instance.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dagster_home", "dagster.yaml"]
