"""Declarative automation keeps its promises: per-shard assets first, global assets once every shard
is tagged and scored, never downstream of a failed input, and always with the project config's
settings. The automation sensor's conditions are evaluated in a test instance tick by tick, and the
runs it requests are executed as the daemon launches them: without any run config."""

import json
from collections import defaultdict
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from curation_assets.automation import automation_sensor
from curation_assets.definitions import project_definitions
from curation_assets.landing import land_file
from curation_assets.project import ProjectConfig

FIXTURES = Path(__file__).parent / "fixtures"
SHARD_ASSETS = {"open_tags", "instance_scores"}
GLOBAL_ASSETS = {"normalized_tags", "tag_vocabulary", "knowledge_tree", "tree_memberships", "comparative_scores",
                 "selected_subset", "selection_reasons", "subset_export", "selection_report"}


def write_config(tmp_path, **assets) -> Path:
    path = tmp_path / "curation.yaml"
    path.write_text(yaml.safe_dump({
        "home": "home",
        "resources": {"scorer": {"model": str(FIXTURES / "tiny_gpt2")}},
        "assets": {"instance_scores": {"methods": ["ifd"]}, "selected_subset": {"strategy": "top_k", "budget": 3}, **assets},
    }))
    return path


class Automation:
    """The automation sensor's evaluations on one instance, tick after tick, and the runs it requests."""

    def __init__(self, defs, instance):
        self.defs, self.instance, self.cursor = defs, instance, None
        self.job = defs.resolve_implicit_global_asset_job_def()
        self.tick()  # the sensor's first tick only sets its cursor

    def tick(self) -> dict[str | None, set[str]]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        requested = defaultdict(set)
        for key in self.job.asset_layer.asset_graph.get_all_asset_keys():
            if self.defs.resolve_asset_graph().get(key).is_materializable:
                for partition in result.get_requested_partitions(key):
                    requested[partition].add(key.to_user_string())
        return dict(requested)

    def launch(self, requested: dict[str | None, set[str]]) -> dict[str | None, bool]:
        """One run per partition, as the daemon groups them; no run config, as the daemon sends none."""
        return {
            partition: self.job.execute_in_process(
                instance=self.instance, partition_key=partition, asset_selection=[dg.AssetKey(k) for k in keys], raise_on_error=False,
            ).success
            for partition, keys in requested.items()
        }


def land(defs, instance, tmp_path, name, n, offset=0) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"instruction": f"Explain topic number {i} in detail?", "output": f"Topic {i} is about item {i % 7}."}) + "\n" for i in range(offset, offset + n)))
    key = land_file(path, defs.resources["storage"].landed, name).partition
    instance.add_dynamic_partitions("pool_shards", [key])
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=instance, partition_key=key, asset_selection=[dg.AssetKey("raw_pool"), dg.AssetKey("raw_pool_quarantine")]).success
    return key


def test_sensor_targets_every_asset():
    defs = project_definitions(ProjectConfig())
    keys = automation_sensor.asset_selection.resolve(defs.resolve_asset_graph())
    assert {k.to_user_string() for k in keys} >= SHARD_ASSETS | GLOBAL_ASSETS


def test_shards_first_then_one_global_refresh_with_the_project_settings(tmp_path):
    config = ProjectConfig.load(write_config(tmp_path))
    defs = project_definitions(config)
    with dg.instance_for_test() as instance:
        auto = Automation(defs, instance)
        a = land(defs, instance, tmp_path, "a.jsonl", 12)
        first = auto.tick()
        assert first == {a: SHARD_ASSETS}  # no global asset (comparative_scores included) before tagging and scoring
        assert auto.launch(first) == {a: True}
        second = auto.tick()
        assert second == {None: GLOBAL_ASSETS}  # every global asset in one run
        assert auto.launch(second) == {None: True}
        assert auto.tick() == {}

        # The refresh ran with the project config's settings, not the code defaults (tags, 0.05).
        home = Path(config.home)
        subset = pl.read_parquet(home / "assets" / "selected_subset.parquet")
        reasons = pl.read_parquet(home / "assets" / "selection_reasons.parquet")
        assert subset.height == 3 and set(subset["strategy"]) == {"top_k"} and set(reasons["budget"]) == {3}
        scores = pl.read_parquet(home / "assets" / "instance_scores" / f"{a}.parquet")
        assert "ifd_ppl" in scores.columns and "avg_noisy_ifd" not in scores.columns  # methods: [ifd]

        # A second shard: its own assets first; while one of them fails, no global refresh.
        b = land(defs, instance, tmp_path, "b.jsonl", 8, offset=100)
        third = auto.tick()
        assert third == {b: SHARD_ASSETS}
        bad = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, partition_key=b, asset_selection=[dg.AssetKey("open_tags"), dg.AssetKey("instance_scores")],
            run_config={"ops": {"instance_scores": {"config": {"methods": ["iterit"], "iterit_chat_template": str(tmp_path / "no_such_template.jinja")}}}},
            raise_on_error=False,
        )
        assert not bad.success
        assert auto.tick() == {}  # instance_scores[b] failed: the global assets wait
        assert auto.launch({b: {"instance_scores"}}) == {b: True}  # fixed (re-run with the project config)
        assert auto.tick() == {None: GLOBAL_ASSETS}


def test_never_downstream_of_a_failed_input(tmp_path):
    defs = project_definitions(ProjectConfig.load(write_config(tmp_path, normalized_tags={"alpha": 1})))
    with dg.instance_for_test() as instance:
        auto = Automation(defs, instance)
        a = land(defs, instance, tmp_path, "a.jsonl", 12)
        assert auto.launch(auto.tick()) == {a: True}
        assert auto.launch(auto.tick()) == {None: True}
        job = defs.resolve_implicit_global_asset_job_def()
        failed = job.execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("normalized_tags"), dg.AssetKey("tag_vocabulary")],
            run_config={"ops": {"normalized_tags": {"config": {"n_clusters": 0}}}}, raise_on_error=False,
        )
        assert not failed.success
        assert auto.tick() == {}
        # The scores change (a re-run of the shard): the selection would refresh, but normalized_tags'
        # latest run failed, so nothing downstream of it runs on its old output.
        assert job.execute_in_process(instance=instance, partition_key=a, asset_selection=[dg.AssetKey("instance_scores")]).success
        assert auto.tick() == {}
        # Once normalized_tags succeeds again, everything below it refreshes.
        assert job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("normalized_tags"), dg.AssetKey("tag_vocabulary")]).success
        assert auto.tick()[None] >= {"knowledge_tree", "selected_subset", "subset_export"}


def test_normalized_tags_when_alpha_drops_every_tag(tmp_path):
    """The default alpha (20) on a pool where no tag is that common: a warning, not a crash."""
    defs = project_definitions(ProjectConfig.load(write_config(tmp_path)))
    with dg.instance_for_test() as instance:
        a = land(defs, instance, tmp_path, "a.jsonl", 6)
        job = defs.resolve_implicit_global_asset_job_def()
        assert job.execute_in_process(instance=instance, partition_key=a, asset_selection=[dg.AssetKey("open_tags")]).success
        result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("normalized_tags"), dg.AssetKey("tag_vocabulary")])
        assert result.success
        [mat] = [m for m in result.asset_materializations_for_node("normalized_tags") if m.asset_key == dg.AssetKey("normalized_tags")]
        assert "dropped every tag" in mat.metadata["warning"].value and "alpha 20" in mat.metadata["warning"].value
        tags = pl.read_parquet(Path(defs.resources["storage"].assets) / "normalized_tags.parquet")
        assert tags.height == 6 and tags["canonical_tags"].list.len().sum() == 0
        assert tags.schema["clusters"] == pl.List(pl.Int32)


@pytest.mark.parametrize("bad, message", [
    ({"selected_subset": {"budgett": 3}}, "unknown settings ['budgett']"),
    ({"no_such_asset": {}}, "not asset ops"),
    ({"selected_subset": {"budget": "lots"}}, "selected_subset.budget"),
])
def test_config_mistakes_are_clear(tmp_path, bad, message):
    path = tmp_path / "curation.yaml"
    path.write_text(yaml.safe_dump({"assets": bad}))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        project_definitions(ProjectConfig.load(path))
