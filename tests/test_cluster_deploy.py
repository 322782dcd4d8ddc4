"""The cluster deployment (deploy/): Dagster instance on PostgreSQL, steps on two dagster-celery
workers over Redis, GPU steps limited by the `gpu` pool. The demo pool run through it gives the
same tables as a single-process run."""

import importlib
import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

import curation_assets.definitions
from curation_assets.headless import run_graph
from curation_assets.project import ProjectConfig
from tests.servers import ROOT, base_env, celery_workers, missing_servers, postgres_server, redis_server

# Off by default until verified in CI on this machine type: CURATION_DEPLOY_TESTS=1 runs it.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CURATION_DEPLOY_TESTS") != "1", reason="deployment test: set CURATION_DEPLOY_TESTS=1"),
]

DEMO = ROOT / "demo"
# Two of the demo pool's eight files (Parquet OpenAI messages, messy JSON Lines with quarantined rows) keep
# the test near two minutes a side on a loaded 2-core machine; deploy/README.md runs all eight.
DEMO_FILES = [DEMO / "pool" / name for name in ("gpteacher_toolformer_messages.parquet", "messy.jsonl")]
SHARD_ASSETS = ["raw_pool", "raw_pool_quarantine", "open_tags", "instance_scores"]
VOLATILE = {"landed_at", "computed_at", "elapsed_s"}


def demo_config(tmp_path: Path, home: Path) -> Path:
    """demo/config.yaml with its own home; instance_scores limited to IFD to keep CI time short."""
    data = yaml.safe_load((DEMO / "config.yaml").read_text())
    data["home"] = str(home)
    data["assets"]["instance_scores"]["methods"] = ["ifd"]
    for settings in data["resources"].values():
        for key in ("model", "complexity_model", "quality_model"):
            if isinstance((settings or {}).get(key), str):
                settings[key] = str(DEMO / settings[key])
    data["assets"]["selected_subset"]["target_file"] = str(DEMO / data["assets"]["selected_subset"]["target_file"])
    path = tmp_path / f"config-{home.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tables(home: Path) -> dict[str, pl.DataFrame]:
    out = {}
    for asset in SHARD_ASSETS:
        for file in sorted((home / "assets" / asset).glob("*.parquet")):
            out[f"{asset}/{file.stem}"] = pl.read_parquet(file)
    for asset in ("normalized_tags", "knowledge_tree", "selected_subset"):
        if (home / "assets" / f"{asset}.parquet").exists():
            out[asset] = pl.read_parquet(home / "assets" / f"{asset}.parquet")
    return {k: v.drop([c for c in v.columns if c in VOLATILE]) for k, v in out.items()}


@pytest.fixture(scope="module")
def servers():
    missing = missing_servers()
    if missing:
        pytest.skip(f"not installed: {missing} (apt-get install postgresql redis-server; .ci/run does)")
    with postgres_server() as pg, redis_server() as redis:
        yield pg, redis


def test_demo_pool_on_postgres_and_two_celery_workers_equals_single_process(tmp_path, servers, monkeypatch):
    pg, redis = servers
    # Single process: SQLite instance, in-process execution.
    single_home = tmp_path / "single"
    with dg.instance_for_test() as instance:
        single = run_graph(DEMO_FILES, ProjectConfig.load(demo_config(tmp_path, single_home)), instance=instance)
    assert all(single.shard_runs.values()) and single.global_run

    # Cluster: deploy/dagster.yaml on Postgres, the celery executor, two workers.
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    instance_yaml = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    instance_yaml["concurrency"]["pools"]["default_limit"] = 2  # two workers stand for two GPUs
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    cluster_home = tmp_path / "cluster"
    settings = {
        **pg,
        "DAGSTER_HOME": str(dagster_home),
        "CURATION_EXECUTOR": "celery",
        "CURATION_CELERY_BROKER": f"{redis}/0",
        "CURATION_CELERY_BACKEND": f"{redis}/1",
        "CURATION_CONFIG": str(demo_config(tmp_path, cluster_home)),
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    # The single-process run imported the definitions without these settings; a fresh `curate run`
    # process reads them at import, as the workers do.
    importlib.reload(curation_assets.definitions)
    try:
        logs = tmp_path / "logs"
        logs.mkdir()
        with celery_workers(["alpha", "beta"], base_env(settings), logs):
            with dg.DagsterInstance.get() as instance:
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
                cluster = run_graph(DEMO_FILES, ProjectConfig.load(os.environ["CURATION_CONFIG"]), instance=instance)
                assert all(cluster.shard_runs.values()) and cluster.global_run, [p.read_text()[-3000:] for p in logs.iterdir()]
                workers = _celery_workers_used(instance)
        assert {name.split("@")[0] for name in workers} == {"alpha", "beta"}  # "<name>@<host>"

    finally:
        monkeypatch.undo()
        importlib.reload(curation_assets.definitions)

    ours, theirs = tables(single_home), tables(cluster_home)
    assert ours.keys() == theirs.keys() and len([k for k in ours if k.startswith("instance_scores/")]) == len(DEMO_FILES)
    for name in ours:
        assert ours[name].equals(theirs[name]), name


def _celery_workers_used(instance: dg.DagsterInstance) -> set[str]:
    """Worker names from the engine events the celery tasks report, over every run."""
    names = set()
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            event = entry.dagster_event
            data = event.engine_event_data if event else None
            if data and "Celery worker" in data.metadata:
                names.add(data.metadata["Celery worker"].value)
    return names
