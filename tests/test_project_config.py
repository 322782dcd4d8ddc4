"""One project config for every entry point: the definitions the UI loads and `curate` resolve the
same home, resources and asset settings from curation.yaml (or $CURATION_CONFIG)."""

import argparse
from pathlib import Path

import dagster as dg
import pytest
import yaml

from curation_assets import cli
from curation_assets.definitions import STAGES, project_definitions
from curation_assets.project import ProjectConfig

ROOT = Path(__file__).resolve().parents[1]


def op_defaults(defs: dg.Definitions, op: str) -> dict:
    graph = defs.resolve_asset_graph()
    [asset] = {graph.assets_def_for_key(k) for k in graph.get_all_asset_keys() if graph.assets_def_for_key(k).node_def.name == op}
    return asset.node_def.config_schema.as_field().default_value


def test_the_project_config_is_what_the_ui_loads(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("CURATION_CONFIG", raising=False)
    config = ProjectConfig.load(None)
    assert config.path == ROOT / "curation.yaml" and config.home == str(ROOT / ".curation")
    defs = project_definitions(config)
    # The launchpad's defaults (and any run without run config) are the file's settings ...
    subset = op_defaults(defs, "selected_subset")
    assert subset["budget"] == 0.1 and subset["strategy"] == {"tags": {"target_file": str(ROOT / "demo" / "target" / "gsm8k_test_questions.jsonl")}}
    assert subset["neighbours"] is True  # ... and the code's defaults for what the file leaves out
    assert op_defaults(defs, "instance_scores")["methods"] == ["ifd", "tshirt", "cherry", "iterit", "deita"]
    assert op_defaults(defs, "normalized_tags")["alpha"] == 1
    # Resources and the data home resolve to the same places as for `curate`.
    assert defs.resources["scorer"].model == str(ROOT / "demo" / "scorer")
    assert defs.resources["storage"].root == ROOT / ".curation"
    assert cli._storage(argparse.Namespace(config=None, home=None)).root == ROOT / ".curation"


def test_curation_config_env_names_the_file_and_env_vars_hold_secrets(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump({
        "home": "data",
        "resources": {"judge": {"base_url": {"env": "JUDGE_URL"}}, "landing": {"min_age_seconds": 0}},
        "assets": {"selected_subset": {"strategy": "random", "budget": 7}},
    }))
    monkeypatch.setenv("CURATION_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    config = ProjectConfig.load(None)
    assert config.home == str(tmp_path / "data")
    assert isinstance(config.resource_settings()["judge"]["base_url"], dg.EnvVar)
    defs = project_definitions(config)
    assert op_defaults(defs, "selected_subset")["budget"] == 7
    assert op_defaults(defs, "selected_subset")["strategy"] == {"random": {}}  # the earlier flat form, nested
    assert defs.resources["storage"].root == tmp_path / "data"
    monkeypatch.setenv("CURATION_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="CURATION_CONFIG"):
        ProjectConfig.load(None)


def test_asset_groups_are_the_numbered_stages():
    defs = project_definitions(ProjectConfig())
    graph = defs.resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert all(group in STAGES for group in groups.values()), groups
    order = list(STAGES)
    for up, down in [("raw_pool", "open_tags"), ("open_tags", "normalized_tags"), ("normalized_tags", "knowledge_tree"), ("knowledge_tree", "selected_subset")]:
        assert order.index(groups[up]) < order.index(groups[down])


@pytest.mark.parametrize("name", ["curation.yaml", "demo/config-finetune.yaml", "demo/config-llm.yaml", "demo/config-targeted.yaml"])
def test_every_shipped_config_is_what_the_ui_would_run(name, monkeypatch):
    """Each config the README names loads as the UI loads it (CURATION_CONFIG), and every asset
    setting in the file is its op's launchpad default (what Materialize runs with)."""
    monkeypatch.setenv("CURATION_CONFIG", str(ROOT / name))
    config = ProjectConfig.load(None)
    defs = project_definitions(config)
    for op, settings in config.assets.items():
        defaults = op_defaults(defs, op)
        for key, value in settings.items():
            assert defaults[key] == value, (op, key)
