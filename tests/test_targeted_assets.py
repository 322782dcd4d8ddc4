"""Targeted selection end to end in Dagster with the tiny random Llama: query_set, warmup_adapter,
gradient_store (partitioned, shards computed apart), every TIS algorithm and representation as a
selected_subset strategy, the reasons and `curate why`."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from curation_assets import cli
from curation_assets.definitions import build_definitions
from curation_assets.headless import RunConfig, run_graph
from metadata import undescribed_columns

TINY = Path(__file__).parent / "fixtures" / "tiny_llama"
SELECTION_KEYS = [dg.AssetKey("selected_subset"), dg.AssetKey("selection_reasons")]

TOPICS = ["math: add the numbers {a} and {b}", "write a python function that returns {a} times {b}", "translate the word number {a} to French",
          "list {a} animals that live in the sea", "how many days are in {a} weeks and {b} days?"]


def _rows(offset: int, n: int) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        a, b = i % 7 + 1, i % 5 + 2
        rows.append({"instruction": TOPICS[i % len(TOPICS)].format(a=a, b=b), "input": "", "output": f"The answer is {a * b + i}. Steps: {a} and {b}."})
    return rows


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("targeted")
    pool = root / "pool"
    pool.mkdir()
    for k, (offset, n) in enumerate([(0, 14), (14, 12)]):
        (pool / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(offset, n)))
    queries = root / "my_task.jsonl"
    queries.write_text("".join(json.dumps({"instruction": f"add {a} and {b}", "output": f"The answer is {a + b}."}) + "\n" for a, b in [(1, 2), (3, 4), (5, 6)]))
    config = RunConfig(home=str(root / "home"), resources={"landing": {"min_age_seconds": 0}, "tagger": {"backend": "keyphrase"}, "target_model": {"model": str(TINY)}},
                       assets={
                           "normalized_tags": {"alpha": 1, "n_clusters": 3}, "knowledge_tree": {"branching": 3}, "instance_scores": {"methods": []},
                           "query_set": {"tasks": [{"source": "gsm8k", "limit": 3}, {"source": "file", "path": str(queries), "name": "addition"}]},
                           "warmup_adapter": {"share": 0.5, "rank": 4, "alpha": 16, "epochs": 2, "batch_size": 4, "max_length": 256, "seed": 1},
                           "gradient_store": {"proj_dim": 256, "max_length": 256, "max_tokens": 2048},
                           "selected_subset": {"budget": 8, "strategy": {"round_robin": {}}},
                       })
    with dg.instance_for_test() as instance:
        report = run_graph([pool], config, instance=instance, log=lambda _: None)
        assert all(report.shard_runs.values()) and report.global_run
        yield config, instance, report.home


def select(graph, strategy: str, budget: int, **settings):
    config, instance, _ = graph
    defs = build_definitions(home=config.home, resource_config=config.resources)
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=SELECTION_KEYS, raise_on_error=False,
        run_config={"ops": {"selected_subset": {"config": {"budget": budget, "strategy": {strategy: settings}}}},
                    "loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    return result


def test_headless_run_builds_every_targeted_asset(graph):
    _, instance, home = graph
    warmup = pl.read_parquet(home / "assets" / "warmup_adapter.parquet")
    assert warmup["epoch"].to_list() == [1, 2] and abs(sum(warmup["weight"]) - 1) < 1e-9
    assert all(Path(p).exists() for p in warmup["optimizer_path"])
    shards = sorted((home / "assets" / "gradient_store").glob("*.parquet"))
    assert len(shards) == 2
    total = 0
    for shard in shards:
        table = pl.read_parquet(shard)
        folder = Path(table["folder"][0])
        arrays = [np.load(folder / f"epoch-{e}.npy") for e in (1, 2)]
        assert all(a.dtype == np.float16 and a.shape == (int((table["position"] >= 0).sum()), 256) for a in arrays)
        np.testing.assert_allclose(np.linalg.norm(arrays[0].astype(np.float32), axis=1), 1, atol=2e-3)
        total += table.height
    assert total == 26
    mat = instance.get_latest_materialization_event(dg.AssetKey("warmup_adapter")).asset_materialization
    assert "data:image/png" in mat.metadata["loss_curve"].value
    assert undescribed_columns(instance) == {}


def test_round_robin_reasons_and_ui(graph):
    _, instance, home = graph
    subset = pl.read_parquet(home / "assets" / "selected_subset.parquet")
    reasons = pl.read_parquet(home / "assets" / "selection_reasons.parquet")
    assert subset.height == 8 and subset["target_task"].null_count() == 0
    queries = pl.read_parquet(home / "assets" / "query_set.parquet")
    assert set(queries["task"]) == {"gsm8k", "addition"}
    # round robin: query i claims pick i (mod M), one new row per turn
    m = queries.height
    assert subset.sort("rank")["target_query"].to_list() == [r % m for r in range(8)]
    chosen = reasons.filter(pl.col("selected"))
    assert chosen["reason"].str.contains("round_robin round").all() and chosen["reason"].str.contains("claimed by query").all()
    dropped = reasons.filter(~pl.col("selected"))
    assert dropped["reason"].str.contains("nearest query").all() and dropped["nearest_query_similarity"].null_count() == 0
    meta = instance.get_latest_materialization_event(dg.AssetKey("selected_subset")).asset_materialization.metadata
    per_task = [k for k in meta if k.startswith("similarity_")]  # one histogram per task some row is nearest to
    assert per_task and all("data:image/png" in meta[k].value for k in per_task) and "data:image/png" in meta["subset_split_plot"].value


@pytest.mark.parametrize("settings", [
    {"strategy": "doubly_greedy"}, {"strategy": "uot"}, {"strategy": "uot", "uot_candidates_per_query": None},
    {"strategy": "knn_uniform"}, {"strategy": "knn_kde"},
    {"strategy": "round_robin", "representation": "rds"}, {"strategy": "round_robin", "representation": "embed"},
    {"strategy": "doubly_greedy", "representation": "bm25"},
], ids=lambda s: "-".join(str(v) for v in s.values()))
def test_each_algorithm_and_representation_selects(graph, settings):
    result = select(graph, budget=6, **settings)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["budget_met"] and checks["no_duplicates"] and checks["traceable_to_source"]
    subset = pl.read_parquet(graph[2] / "assets" / "selected_subset.parquet")
    assert subset.height == 6 and subset["row_id"].is_unique().all()


def test_curate_why_explains_a_targeted_pick(graph, capsys):
    assert select(graph, strategy="round_robin", budget=8).success
    subset = pl.read_parquet(graph[2] / "assets" / "selected_subset.parquet").sort("rank")
    assert cli.main(["why", subset["row_id"][0][:12], "--home", str(graph[2])]) == 0
    out = capsys.readouterr().out
    assert "SELECTED, rank 1" in out and "claimed by query 0" in out and "TARGETED" in out and "similarity" in out


def test_the_demo_config_is_what_the_ui_materializes(tmp_path, monkeypatch):
    """demo/config-targeted.yaml as the UI loads it (CURATION_CONFIG): the launchpad's defaults are
    the targeted strategy and the warm-up settings, and query_set materializes with no run config,
    as the Materialize button sends it."""
    from curation_assets.definitions import project_definitions
    from curation_assets.project import ProjectConfig

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("CURATION_CONFIG", str(root / "demo" / "config-targeted.yaml"))
    config = ProjectConfig.load(None)
    config.home = str(tmp_path / "home")
    defs = project_definitions(config)
    graph = defs.resolve_asset_graph()

    def defaults(key: str) -> dict:
        return graph.assets_def_for_key(dg.AssetKey(key)).node_def.config_schema.as_field().default_value

    assert defaults("selected_subset")["strategy"] == {"round_robin": {"representation": "less"}}
    assert defaults("warmup_adapter")["rank"] == 8 and defaults("gradient_store")["proj_dim"] == 1024
    assert defs.resources["target_model"].model == str(root / "demo" / "scorer")
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance, asset_selection=[dg.AssetKey("query_set")])
        assert result.success
    queries = pl.read_parquet(tmp_path / "home" / "assets" / "query_set.parquet")
    assert {t.split("/")[0] for t in queries["task"]} == {"gsm8k", "bbh", "mmlu"}
