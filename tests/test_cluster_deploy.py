"""The cluster deployment (deploy/): Dagster instance on PostgreSQL, steps on two dagster-celery
workers over Redis, GPU steps limited by the `gpu` pool. `curate run` with the celery executor, as
the README's "Deployments" documents it, gives the same tables as a single-process run of the same
demo files. Runs in CI wherever PostgreSQL and Redis are installed (.ci/run installs them from
Debian's packages); skips, saying which, where they are not."""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from curation_assets.headless import run_graph
from curation_assets.project import ProjectConfig
from tests.servers import ROOT, base_env, celery_workers, missing_servers, postgres_server, redis_server

pytestmark = pytest.mark.slow

DEMO = ROOT / "demo"
# Two of the demo pool's eight files (Parquet OpenAI messages, messy JSON Lines with quarantined
# rows) keep the test within a few minutes on a loaded 2-core machine.
DEMO_FILES = [DEMO / "pool" / name for name in ("gpteacher_toolformer_messages.parquet", "messy.jsonl")]
SHARD_ASSETS = ["raw_pool", "raw_pool_quarantine", "open_tags", "instance_scores"]
GLOBAL_ASSETS = ["normalized_tags", "tag_vocabulary", "knowledge_tree", "tree_memberships", "selected_subset", "selection_reasons"]
GPU_STEPS = ("open_tags", "instance_scores")  # the `gpu` pool's steps that the demo config runs
VOLATILE = {"landed_at", "computed_at", "elapsed_s"}


def demo_config(tmp_path: Path, home: Path) -> Path:
    """The project config (curation.yaml) with its own data home and absolute paths;
    instance_scores limited to IFD to keep CI time short."""
    data = yaml.safe_load((ROOT / "curation.yaml").read_text())
    data["home"] = str(home)
    data["assets"]["instance_scores"]["methods"] = ["ifd"]
    for settings in data["resources"].values():
        for key in ("model", "complexity_model", "quality_model"):
            if isinstance((settings or {}).get(key), str):
                settings[key] = str(ROOT / settings[key])
    tags = data["assets"]["selected_subset"]["strategy"]["tags"]
    tags["target_file"] = str(ROOT / tags["target_file"])
    path = tmp_path / f"config-{home.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tables(home: Path) -> dict[str, pl.DataFrame]:
    out = {}
    for asset in SHARD_ASSETS:
        for file in sorted((home / "assets" / asset).glob("*.parquet")):
            out[f"{asset}/{file.stem}"] = pl.read_parquet(file)
    for asset in GLOBAL_ASSETS:
        out[asset] = pl.read_parquet(home / "assets" / f"{asset}.parquet")
    return {k: v.drop([c for c in v.columns if c in VOLATILE]) for k, v in out.items()}


@pytest.fixture(scope="module")
def servers():
    missing = missing_servers()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install postgresql redis-server; .ci/run does)")
    with postgres_server() as pg, redis_server() as redis:
        yield pg, redis


def test_demo_pool_on_postgres_and_two_celery_workers_equals_single_process(tmp_path, servers):
    pg, redis = servers
    # Single process: a SQLite instance, steps in this process.
    single_home = tmp_path / "single"
    with dg.instance_for_test() as instance:
        single = run_graph(DEMO_FILES, ProjectConfig.load(demo_config(tmp_path, single_home)), instance=instance, log=lambda _: None)
    assert single.ok, single.summary()

    # Cluster: deploy/dagster.yaml as it ships (Postgres, run queue, gpu pool at one slot), the
    # celery executor, two workers, and `curate run` as the README runs it.
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    # The data home comes from `curate run --home`, not from the config the workers were started
    # with: the run carries its settings to the workers.
    cluster_home = tmp_path / "cluster"
    config = demo_config(tmp_path, tmp_path / "not-this-home")
    env = base_env({
        **pg,
        "DAGSTER_HOME": str(dagster_home),
        "CURATION_EXECUTOR": "celery",
        "CURATION_CELERY_BROKER": f"{redis}/0",
        "CURATION_CELERY_BACKEND": f"{redis}/1",
        "CURATION_CONFIG": str(config),
    })
    logs = tmp_path / "logs"
    logs.mkdir()
    with celery_workers(["alpha", "beta"], env, logs):
        started = time.time()
        run = subprocess.run(
            [sys.executable, "-m", "curation_assets.cli", "run", *map(str, DEMO_FILES), "--config", str(config), "--home", str(cluster_home)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )
        worker_logs = {p.name: p.read_text()[-3000:] for p in logs.iterdir()}
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:], worker_logs)
    print(f"cluster run: {time.time() - started:.0f}s")
    assert not (tmp_path / "not-this-home").exists()

    old = {k: os.environ.get(k) for k in pg} | {"DAGSTER_HOME": os.environ.get("DAGSTER_HOME")}
    os.environ.update({**pg, "DAGSTER_HOME": str(dagster_home)})
    try:
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            runs = instance.get_runs()
            assert {r.job_name for r in runs} == {"shard_assets", "global_assets"} and len(runs) == len(DEMO_FILES) + 1
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
            workers = celery_workers_used(instance)
            gpu = gpu_step_intervals(instance)
            pool = instance.event_log_storage.get_concurrency_info("gpu")
            assert pool.slot_count == 1 and not pool.claimed_slots and not pool.pending_steps  # every slot given back
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert {name.split("@")[0] for name in workers} == {"alpha", "beta"}  # "<name>@<host>"

    # The gpu pool (one slot) held: no two gpu steps ran at once, though open_tags and
    # instance_scores of a shard were ready together (both read only raw_pool) on two free workers.
    assert len(gpu) == len(GPU_STEPS) * len(DEMO_FILES), gpu
    spans = sorted(gpu.values())
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, gpu

    ours, theirs = tables(single_home), tables(cluster_home)
    assert ours.keys() == theirs.keys() and len([k for k in ours if k.startswith("instance_scores/")]) == len(DEMO_FILES)
    for name in ours:
        assert ours[name].equals(theirs[name]), name


def celery_workers_used(instance: dg.DagsterInstance) -> set[str]:
    """Worker names from the engine events the celery tasks report, over every run."""
    names = set()
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            event = entry.dagster_event
            data = event.engine_event_data if event else None
            if data and "Celery worker" in data.metadata:
                names.add(data.metadata["Celery worker"].value)
    return names


def gpu_step_intervals(instance: dg.DagsterInstance) -> dict[tuple[str, str], tuple[float, float]]:
    """(run, step) -> (start, end) timestamps of every gpu-pool step, from the event log."""
    spans: dict[tuple[str, str], list[float]] = {}
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}):
            if entry.step_key in GPU_STEPS:
                span = spans.setdefault((run.run_id, entry.step_key), [None, None])
                span[0 if entry.dagster_event_type == dg.DagsterEventType.STEP_START else 1] = entry.timestamp
    return {k: (s, e) for k, (s, e) in spans.items()}
