"""The plugin registry: a toy score method and a toy strategy, registered with no other edit, flow
through instance_scores, selected_subset, the reasons table and `curate why`; a VERSION bump or a
changed setting re-runs exactly the affected work, and the automation refreshes stale shards."""

import dataclasses
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl
import pytest
from pydantic import Field

from curation_assets import cli, instance_scores, selected_subset
from curation_assets.definitions import build_definitions
from curation_assets.headless import RunConfig, run_graph
from curation_assets.methods import registry
from curation_assets.methods.plugin import Column, Picked, ScoreMethod, Settings, Strategy, empty_gain, unpicked
from metadata import undescribed_columns

ROOT = Path(__file__).resolve().parents[1]
TINY_GPT2 = ROOT / "tests" / "fixtures" / "tiny_gpt2"


# ---- a toy paper module: one score method and one strategy, as a contributor would write them


class ToySettings(Settings):
    toy_unit: Literal["words", "chars"] = Field("words", description="Count response words or characters.")


def toy_compute(rows: pl.DataFrame, s: ToySettings, model) -> pl.DataFrame:
    expr = pl.col("response").str.split(" ").list.len() if s.toy_unit == "words" else pl.col("response").str.len_chars()
    return rows.select("row_id", expr.cast(pl.Float64).alias("toy_length"))


TOY_SCORE = ScoreMethod(
    name="toy", description="response length", settings=ToySettings, version="1",
    columns={"toy_length": Column(pl.Float64, "Response length.")}, compute=toy_compute,
    offers=("toy_length",), model=None, histograms={"toy_length": "Toy response length"},
)


class ShortestSettings(Settings):
    longest: bool = Field(False, description="Pick the longest instead.")


def shortest_pick(c, budget, s: ShortestSettings) -> Picked:
    length = c.column("toy_length")
    order = np.argsort(-length if s.longest else length, kind="stable")[: budget.rows].tolist()
    gain = empty_gain(c.n)
    gain[order] = length[order]
    return Picked(order, gain, "toy length", {i: "toy: too long for the budget" for i in unpicked(c.n, order)}, extra={"toy_rank": np.arange(c.n, dtype=float)},
                  columns={"toy_bucket": [("long" if v > 20 else "short") for v in length]}, subset_columns=("toy_bucket",))


SHORTEST = Strategy(
    name="shortest", description="the shortest responses", settings=ShortestSettings, version="1", pick=shortest_pick,
    fills=frozenset({"gain", "eligible", "scores"}), reports={"toy_rank": "Position in the pool."}, columns={"toy_bucket": "short or long (over 20 words)."},
)


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setitem(registry.SCORE_METHODS, "toy", TOY_SCORE)
    monkeypatch.setitem(registry.STRATEGIES, "shortest", SHORTEST)


def toy_config(home: Path) -> RunConfig:
    return RunConfig(
        home=str(home),
        resources={"landing": {"min_age_seconds": 0}, "scorer": {"model": str(TINY_GPT2)}},
        assets={
            "normalized_tags": {"alpha": 1, "n_clusters": 4},
            "knowledge_tree": {"branching": 4},
            "instance_scores": {"methods": ["ifd", "toy"]},
            "selected_subset": {"budget": 5, "strategy": {"shortest": {}}},
        },
    )


def cache_table(instance, partition: str) -> str:
    """The cache table's rows as "| method | reused | computed |" lines."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("instance_scores"), asset_partitions=[partition]), limit=1).records
    table = records[0].asset_materialization.metadata["cache"]
    return "\n".join(f"| {r.data['method']} | {r.data['reused']} | {r.data['computed']} |" for r in table.records)


@pytest.mark.slow
def test_a_registered_toy_method_and_strategy_flow_through_the_graph(tmp_path, toy_registry, capsys):
    config = toy_config(tmp_path / "home")
    pool = ROOT / "demo" / "pool" / "gsm8k_train.jsonl.gz"
    with dg.instance_for_test() as instance:
        report = run_graph([pool], config, instance=instance, log=lambda _: None)
        assert report.global_run and all(report.shard_runs.values())
        (shard,) = report.shard_runs
        scores = pl.read_parquet(report.home / "assets" / "instance_scores" / f"{shard}.parquet")
        responses = pl.read_parquet(report.home / "assets" / "raw_pool" / f"{shard}.parquet").filter(pl.col("duplicate_of").is_null())
        expected = responses.select("row_id", pl.col("response").str.split(" ").list.len().cast(pl.Float64).alias("want"))
        assert scores.join(expected, on="row_id")["toy_length"].to_list() == scores.join(expected, on="row_id")["want"].to_list()
        reasons = pl.read_parquet(report.home / "assets" / "selection_reasons.parquet")
        subset = pl.read_parquet(report.home / "assets" / "selected_subset.parquet")
        assert set(reasons["strategy"]) == {"shortest"} and subset.height == 5
        shortest = expected.join(reasons.select("row_id"), on="row_id").sort("want", maintain_order=True)["row_id"].head(5).to_list()
        assert subset["row_id"].to_list() == shortest
        listed = reasons.explode("scores").unnest("scores")
        assert {"toy_length", "toy_rank", "ifd_ppl"} <= set(listed["name"].drop_nulls())
        assert reasons.filter(~pl.col("selected"))["reason"].unique().to_list() == ["toy: too long for the budget"]
        assert cli.main(["why", subset["row_id"][0], "--home", str(report.home)]) == 0
        story = capsys.readouterr().out
        assert "toy_length" in story and "by strategy 'shortest'" in story
        # Their columns carry the descriptions they registered, in the UI's column schema.
        assert "toy_bucket" in subset.columns and undescribed_columns(instance) == {}
        schema = instance.get_latest_materialization_event(dg.AssetKey("instance_scores")).asset_materialization.metadata["dagster/column_schema"].schema
        assert {c.name: c.description for c in schema.columns}["toy_length"] == "toy: Response length."

        # The toy's settings are typed config: a typo is a config error before any step runs.
        job = build_definitions(home=config.home, resource_config=config.resources).resolve_implicit_global_asset_job_def()
        with pytest.raises(dg.DagsterInvalidConfigError, match="not in enum type"):
            job.execute_in_process(instance=instance, partition_key=shard, asset_selection=[dg.AssetKey("instance_scores")],
                                   run_config={"ops": {"instance_scores": {"config": {"methods": ["toy"], "toy_unit": "letters"}}}})
        with pytest.raises(dg.DagsterInvalidConfigError, match='unexpected config entry "longst"'):
            job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("selected_subset"), dg.AssetKey("selection_reasons")],
                                   run_config={"ops": {"selected_subset": {"config": {"strategy": {"shortest": {"longst": True}}}}}})

        # Nothing changed: nothing is stale, nothing runs.
        assert run_graph([pool], config, instance=instance, log=lambda _: None).shard_runs == {}
        defs = build_definitions(home=config.home, resource_config=config.resources, asset_config=config.assets)
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)

        # A fix in the toy's math: its VERSION goes up. The shard is stale (new code version), the
        # automation asks for instance_scores of that shard (and no other per-shard asset), and the
        # headless run re-runs it without --refresh, recomputing the toy's rows only.
        registry.SCORE_METHODS["toy"] = dataclasses.replace(TOY_SCORE, version="2")
        bumped = build_definitions(home=config.home, resource_config=config.resources, asset_config=config.assets)
        old_version = defs.resolve_assets_def("instance_scores").code_versions_by_key[dg.AssetKey("instance_scores")]
        new_version = bumped.resolve_assets_def("instance_scores").code_versions_by_key[dg.AssetKey("instance_scores")]
        assert old_version != new_version
        ticked = dg.evaluate_automation_conditions(defs=bumped, instance=instance, cursor=before.cursor)
        assert ticked.get_requested_partitions(dg.AssetKey("instance_scores")) == {shard}
        assert ticked.get_num_requested(dg.AssetKey("open_tags")) == 0
        again = run_graph([pool], config, instance=instance, log=lambda _: None)
        assert again.shard_runs == {shard: True}
        n = responses["row_id"].n_unique()
        table = cache_table(instance, shard)
        assert f"| ifd | {n} | 0 |" in table and f"| toy | 0 | {n} |" in table

        # A changed setting of the toy does the same; a setting of a method not computed changes nothing.
        assert instance_scores.code_version({"methods": ["ifd", "toy"], "cherry_prompt": "wiz"}, config.resources) == instance_scores.code_version({"methods": ["ifd", "toy"]}, config.resources)
        config.assets["instance_scores"]["toy_unit"] = "chars"
        assert run_graph([pool], config, instance=instance, log=lambda _: None).shard_runs == {shard: True}
        table = cache_table(instance, shard)
        assert f"| ifd | {n} | 0 |" in table and f"| toy | 0 | {n} |" in table


def test_code_versions_follow_each_methods_settings():
    base = {"methods": ["ifd", "tshirt", "cherry"], "tshirt_copies": 30}
    assert instance_scores.code_version(base) == instance_scores.code_version(dict(base))
    assert instance_scores.code_version({**base, "tshirt_copies": 4}) != instance_scores.code_version(base)
    assert instance_scores.code_version({**base, "iterit_strip_output": False}) == instance_scores.code_version(base)  # iterit not computed
    assert instance_scores.code_version(base, {"scorer": {"model": "gpt2"}}) != instance_scores.code_version(base, {"scorer": {"model": "other"}})
    # Each method's own key: T-SHIRT's changes with tshirt_copies, the others' do not.
    cfg = instance_scores.InstanceScoresConfig(methods=["ifd", "tshirt", "cherry"])
    changed = instance_scores.InstanceScoresConfig(methods=["ifd", "tshirt", "cherry"], tshirt_copies=4)
    keys = {name: registry.SCORE_METHODS[name].settings_key(instance_scores.method_settings(registry.SCORE_METHODS[name], c)) for c in (cfg,) for name in ("ifd", "tshirt", "cherry")}
    changed_keys = {name: registry.SCORE_METHODS[name].settings_key(instance_scores.method_settings(registry.SCORE_METHODS[name], changed)) for name in ("ifd", "tshirt", "cherry")}
    assert [name for name in keys if keys[name] != changed_keys[name]] == ["tshirt"]
    # selected_subset: the strategy's settings and the budget.
    flat = {"strategy": "tags", "budget": 0.1}
    assert selected_subset.code_version(flat) == selected_subset.code_version({"budget": 0.1, "strategy": {"tags": {}}})
    assert selected_subset.code_version({**flat, "gamma": 0.5}) != selected_subset.code_version(flat)
    assert selected_subset.code_version({**flat, "budget": 0.2}) != selected_subset.code_version(flat)


def test_registering_a_clashing_method_is_an_error(toy_registry):
    with pytest.raises(ValueError, match="already registered"):
        registry.register_score_method(dataclasses.replace(TOY_SCORE))
    with pytest.raises(ValueError, match="belong to another method"):
        registry.register_score_method(dataclasses.replace(TOY_SCORE, name="toy2"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register_strategy(dataclasses.replace(SHORTEST))
