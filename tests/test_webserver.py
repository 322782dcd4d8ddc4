"""The UI path: webserver and daemon as separate processes, as the README starts them, driven through
the GraphQL requests the UI's Materialize button sends. First a landed file and raw_pool for that
partition; then the user's whole path (issue 15 item 3): a headless run on demo files, the UI
materializing knowledge_tree, selected_subset and an instance_scores partition on that data, a file
dropped into the landing folder flowing through the automation, and a config edit shown after a
reload."""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import polars as pl
import pytest
import yaml

from conftest import project_dagster_home
from servers import base_env, dagster_daemon, dagster_webserver, wait_for

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"

LAUNCH = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
# What the UI's LaunchAssetLoaderQuery reads of the clicked assets (the fields the launch uses).
LOADER = """
query LaunchAssetLoaderQuery($assetKeys: [AssetKeyInput!]!) {
  assetNodes(assetKeys: $assetKeys) {
    assetKey { path } opNames jobNames partitionKeys
    partitionDefinition { name }
    assetChecksOrError { ... on AssetChecks { checks { name jobNames } } }
    repository { name location { name } }
  }
  assetNodeAdditionalRequiredKeys(assetKeys: $assetKeys) { path }
}"""
# The partition dialog's ConfigPartitionForAssetJobQuery: the partition's run config and tags.
PARTITION_CONFIG = """
query ConfigPartitionForAssetJobQuery($repositoryName: String!, $repositoryLocationName: String!, $jobName: String!,
                                      $partitionName: String!, $assetKeys: [AssetKeyInput!]!) {
  pipelineOrError(params: {pipelineName: $jobName, repositoryName: $repositoryName, repositoryLocationName: $repositoryLocationName}) {
    ... on Pipeline { partition(partitionName: $partitionName, selectedAssetKeys: $assetKeys) {
      runConfigOrError { ... on PartitionRunConfig { yaml } ... on PythonError { message } }
      tagsOrError { ... on PartitionTags { results { key value } } ... on PythonError { message } }
    } }
  }
}"""
# The launchpad's initial config: the job's rootDefaultYaml for the selected assets.
LAUNCHPAD_DEFAULTS = """
query Launchpad($selector: PipelineSelector!) {
  runConfigSchemaOrError(selector: $selector) { __typename ... on RunConfigSchema { rootDefaultYaml } ... on PythonError { message } }
}"""
RELOAD = """
mutation Reload($location: String!) {
  reloadRepositoryLocation(repositoryLocationName: $location) {
    __typename ... on WorkspaceLocationEntry { loadStatus } ... on PythonError { message }
  }
}"""
LOCATIONS = """
query Workspace { workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
ASSET = """
query Asset { assetNodes(assetKeys: [{path: ["raw_pool"]}]) { partitionKeys opName jobNames
  repository { name location { name } } } }"""
RUN = """query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }"""
RUNS = """query Runs { runsOrError { ... on Runs { results { runId status creationTime assetSelection { path }
  tags { key value } } } } }"""
LOGS = """
query Logs($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events {
  __typename ... on MessageEvent { message stepKey }
  ... on ExecutionStepFailureEvent { error { message stack cause { message stack } } }
  ... on RunFailureEvent { error { message } } } } } }"""
METADATA = """
query Mat($key: [String!]!, $partitions: [String!]) { assetNodes(assetKeys: [{path: $key}]) {
  assetMaterializations(partitions: $partitions) { runId partition metadataEntries { label
    ... on JsonMetadataEntry { jsonString } ... on PathMetadataEntry { path } } } } }"""
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def gql(port, query, variables=None):
    response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=120)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


@contextmanager
def webserver_and_daemon(env: dict[str, str], logs: Path, cwd: Path = ROOT):
    """`dagster-webserver` and `dagster-daemon run` on workspace.yaml, as the README starts them
    (both stopped with their code servers and run workers when the block ends, even on failure)."""
    with dagster_webserver(env, logs, cwd=cwd) as port:
        def up():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        # The daemon only once the webserver is up: both create a fresh SQLite instance's tables
        # on start, and started together one can fail with "table ... already exists".
        wait_for(up, 180, "the webserver")
        with dagster_daemon(env, logs, cwd=cwd):
            yield port


def all_runs(port) -> list[dict]:
    return gql(port, RUNS)["runsOrError"]["results"]


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def run_log(port, run_id: str) -> str:
    """The run's step failures and last messages, for an assertion message."""
    events = gql(port, LOGS, {"id": run_id})["logsForRun"].get("events", [])
    lines = []
    for e in events:
        error = e.get("error")
        if error:
            lines.append(f"{e['__typename']}: {error['message']}\n{''.join(error.get('stack') or [])[-1500:]}")
            if error.get("cause"):
                lines.append(f"  caused by: {error['cause']['message']}")
        elif e.get("message"):
            lines.append(f"{e.get('stepKey') or ''} {e['message']}"[:300])
    return "\n".join(lines[-40:])


def wait_for_run(port, run_id: str, timeout: float, what: str) -> None:
    status = wait_for(lambda: (s := gql(port, RUN, {"id": run_id})["runOrError"]["status"]) in FINISHED and s, timeout, what)
    assert status == "SUCCESS", f"{what}: run {run_id} ended {status}\n{run_log(port, run_id)}"


def materialize_button(port, keys: list[str], partition: str | None = None) -> str:
    """What the UI sends when Materialize is clicked on `keys` (LaunchAssetExecutionButton,
    LaunchAssetChoosePartitionsDialog): load the assets, add the siblings a multi-asset cannot
    leave out, take the first job they share, their checks, and for one partition the partition's
    run config and tags; no run config of our own. Returns the run id."""
    paths = [{"path": [k]} for k in keys]
    loaded = gql(port, LOADER, {"assetKeys": paths})
    if loaded["assetNodeAdditionalRequiredKeys"]:  # the UI asks to confirm, then reloads with them
        paths += [{"path": k["path"]} for k in loaded["assetNodeAdditionalRequiredKeys"]]
        loaded = gql(port, LOADER, {"assetKeys": paths})
    assets = loaded["assetNodes"]
    assert len(assets) == len(paths), loaded
    repository = assets[0]["repository"]
    common = [j for j in assets[0]["jobNames"] if all(j in a["jobNames"] for a in assets)]
    assert common, f"no job holds all of {keys}"
    job = common[0]
    checks = [{"name": c["name"], "assetKey": {"path": a["assetKey"]["path"]}}
              for a in assets for c in (a["assetChecksOrError"].get("checks") or []) if not c["jobNames"] or job in c["jobNames"]]
    selector = {"repositoryLocationName": repository["location"]["name"], "repositoryName": repository["name"],
                "pipelineName": job, "assetSelection": paths, "assetCheckSelection": checks}
    run_config, tags = "{}", []
    if partition is not None:
        assert all(a["partitionDefinition"] for a in assets) and partition in assets[0]["partitionKeys"], assets
        found = gql(port, PARTITION_CONFIG, {"repositoryName": repository["name"], "repositoryLocationName": repository["location"]["name"],
                                             "jobName": job, "partitionName": partition, "assetKeys": paths})
        config = found["pipelineOrError"]["partition"]
        assert "yaml" in config["runConfigOrError"] and "results" in config["tagsOrError"], config
        run_config, tags = config["runConfigOrError"]["yaml"], config["tagsOrError"]["results"]
    params = {"mode": "default", "executionMetadata": {"tags": tags}, "runConfigData": run_config, "selector": selector}
    launched = gql(port, LAUNCH, {"executionParams": params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def launchpad_defaults(port, keys: list[str]) -> dict:
    """The run config the launchpad opens with (Shift+Materialize) for `keys`."""
    loaded = gql(port, LOADER, {"assetKeys": [{"path": [k]} for k in keys]})["assetNodes"]
    repository = loaded[0]["repository"]
    selector = {"repositoryLocationName": repository["location"]["name"], "repositoryName": repository["name"],
                "pipelineName": "__ASSET_JOB", "assetSelection": [{"path": [k]} for k in keys]}
    schema = gql(port, LAUNCHPAD_DEFAULTS, {"selector": selector})["runConfigSchemaOrError"]
    assert schema["__typename"] == "RunConfigSchema", schema
    return yaml.safe_load(schema["rootDefaultYaml"])


@pytest.mark.slow
def test_materialize_button_through_webserver_and_daemon(tmp_path):
    home = project_dagster_home(tmp_path / "dagster_home")
    env = base_env({
        "DAGSTER_HOME": str(home),
        "CURATION_HOME": str(tmp_path / "curation"),
        "CURATION_LANDING_INTERVAL": "2",
        "CURATION_AUTOMATION": "off",  # only the landing sensor: the automation's runs are the next test's
        "PYTHONUNBUFFERED": "1",
    })
    # From a folder without curation.yaml: code defaults and $CURATION_HOME.
    with webserver_and_daemon(env, tmp_path, cwd=home) as port:
        landing = tmp_path / "curation" / "landing"
        landing.mkdir(parents=True, exist_ok=True)
        rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(30)]
        (landing / "shard.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        old = time.time() - 60
        os.utime(landing / "shard.jsonl", (old, old))

        # The daemon's sensor lands the file: one partition, one run.
        node = wait_for(lambda: (n := gql(port, ASSET)["assetNodes"][0])["partitionKeys"] and n, 180, "the partition")
        [partition] = node["partitionKeys"]
        assert partition.startswith("shard.jsonl@")

        def sensor_runs():
            return [r for r in all_runs(port) if tag(r, "dagster/sensor_name") == "landing_sensor"]

        wait_for(lambda: sensor_runs() and sensor_runs()[0]["status"] == "SUCCESS", 240, "the sensor's run")
        assert len(sensor_runs()) == 1

        # The Materialize button on raw_pool for that partition.
        run_id = materialize_button(port, ["raw_pool"], partition)
        wait_for_run(port, run_id, 240, "the launched raw_pool run")

        mats = gql(port, METADATA, {"key": ["raw_pool"], "partitions": [partition]})["assetNodes"][0]["assetMaterializations"]
        labels = {e["label"] for e in mats[0]["metadataEntries"]}
        assert {"dagster/row_count", "preview", "lengths", "rows_per_shape", "quarantined"} <= labels
        assert len(mats) == 2  # the sensor's run and ours


# --------------------------------------------------------------------------- the user's path (issue 15 item 3)

HEADLESS_FILES = ["gpteacher_toolformer_messages.parquet", "flan_cot_strategyqa.tsv", "flan_cot_strategyqa.tsv.ingest.json"]
DROPPED_FILE = "gpteacher_roleplay_sharegpt.jsonl"


def demo_project(root: Path, budget: float) -> Path:
    """The shipped curation.yaml's models and settings (the demo scorer, the keyphrase tagger, TAGS
    aligned to the demo's target prompts), IFD the only score so that the test stays short."""
    project = yaml.safe_load((ROOT / "curation.yaml").read_text())
    project["home"] = "data"
    project["resources"]["scorer"]["model"] = str(DEMO / "scorer")
    project["resources"].pop("deita_scorers")  # deita is not scored here
    project["assets"]["instance_scores"] = {"methods": ["ifd"]}
    project["assets"]["normalized_tags"]["n_clusters"] = 4
    project["assets"]["selected_subset"]["budget"] = budget
    project["assets"]["selected_subset"]["strategy"]["tags"]["target_file"] = str(DEMO / "target" / "gsm8k_test_questions.jsonl")
    path = root / "curation.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


@pytest.mark.slow
def test_the_users_path_headless_then_ui_then_growth(tmp_path, monkeypatch):
    from curation_assets.cli import main

    dagster_home = project_dagster_home(tmp_path / "dagster_home")
    config = demo_project(tmp_path, budget=0.1)
    data = tmp_path / "data"
    assets = data / "assets"
    pool = tmp_path / "pool"
    pool.mkdir()
    for name in HEADLESS_FILES:
        shutil.copy(DEMO / "pool" / name, pool / name)

    t0 = time.time()
    # 1. The headless run (`curate run`) on the same instance and config the UI will read.
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    monkeypatch.delenv("CURATION_HOME", raising=False)
    assert main(["run", str(pool), "--config", str(config)]) == 0
    headless = {name: pl.read_parquet(assets / f"{name}.parquet") for name in ("knowledge_tree", "tree_memberships", "selected_subset", "selection_reasons")}
    [scored, *_] = sorted((assets / "instance_scores").glob("*.parquet"))
    partition = scored.stem
    headless["instance_scores"] = pl.read_parquet(scored)
    written = {p: mtime(p) for p in [assets / "knowledge_tree.parquet", assets / "selected_subset.parquet", scored]}

    env = base_env({
        "DAGSTER_HOME": str(dagster_home),
        "CURATION_CONFIG": str(config),
        "CURATION_LANDING_INTERVAL": "2",
        "CURATION_AUTOMATION_INTERVAL": "5",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("CURATION_HOME", None)
    with webserver_and_daemon(env, tmp_path) as port:
        print(f"headless run done, webserver up: {time.time() - t0:.0f}s")
        # 2. The Materialize button on three assets, on the headless run's data and settings.
        launched = {
            "knowledge_tree": materialize_button(port, ["knowledge_tree"]),
            "selected_subset": materialize_button(port, ["selected_subset"]),
            "instance_scores": materialize_button(port, ["instance_scores"], partition),
        }
        for name, run_id in launched.items():
            wait_for_run(port, run_id, 300, f"the UI's {name} run")
        for path, before in written.items():
            assert mtime(path) > before, f"{path} was not rewritten by the UI's run"
        tree = pl.read_parquet(assets / "knowledge_tree.parquet")
        assert tree.select("node_id", "parent_id", "label").equals(headless["knowledge_tree"].select("node_id", "parent_id", "label"))
        assert set(pl.read_parquet(assets / "tree_memberships.parquet")["row_id"]) == set(headless["tree_memberships"]["row_id"])
        subset = pl.read_parquet(assets / "selected_subset.parquet")
        assert subset["row_id"].to_list() == headless["selected_subset"]["row_id"].to_list()
        scores = pl.read_parquet(scored)
        assert scores["row_id"].to_list() == headless["instance_scores"]["row_id"].to_list()
        assert scores["ifd_ppl"].to_numpy() == pytest.approx(headless["instance_scores"]["ifd_ppl"].to_numpy(), abs=1e-5, nan_ok=True)
        # The UI's runs used the config's scorer, not the code default.
        [mat] = [m for m in gql(port, METADATA, {"key": ["instance_scores"], "partitions": [partition]})["assetNodes"][0]["assetMaterializations"]
                 if m["runId"] == launched["instance_scores"]]
        scorer = json.loads(next(e["jsonString"] for e in mat["metadataEntries"] if e["label"] == "scorer"))
        assert scorer["model"] == str(DEMO / "scorer")

        print(f"the UI's three runs done: {time.time() - t0:.0f}s")
        # 3. Growth: a file dropped into the landing folder, with the daemon running.
        started = time.time()
        landing = data / "landing"
        landing.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEMO / "pool" / DROPPED_FILE, data / DROPPED_FILE)
        os.replace(data / DROPPED_FILE, landing / DROPPED_FILE)  # whole at once: the config lands files of any age
        new = wait_for(lambda: [p for p in gql(port, ASSET)["assetNodes"][0]["partitionKeys"] if p.startswith(DROPPED_FILE + "@")], 180,
                       "the landing sensor to add the dropped file's partition")[0]

        def settled():
            """The automation's runs for the new shard and, after them, its global refresh, all done."""
            runs = all_runs(port)
            failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
            assert not failed, "\n\n".join(f"run {r['runId']} {[a['path'] for a in r['assetSelection'] or []]}: {r['status']}\n{run_log(port, r['runId'])}" for r in failed)
            if any(r["status"] not in FINISHED for r in runs):
                return None
            shard_runs = [r for r in runs if tag(r, "dagster/partition") == new]
            # The sensor's run is of its own job (raw_pool and its quarantine), the automation's name their assets.
            landed = any(tag(r, "dagster/sensor_name") == "landing_sensor" for r in shard_runs)
            if not landed or not {"open_tags", "instance_scores"} <= {a["path"][0] for r in shard_runs for a in r["assetSelection"] or []}:
                return None
            last_shard_run = max(r["creationTime"] for r in shard_runs)
            refresh = [r for r in runs if tag(r, "dagster/partition") is None and r["creationTime"] > last_shard_run
                       and {"selected_subset", "normalized_tags"} <= {a["path"][0] for a in r["assetSelection"] or []}]
            return (shard_runs, refresh) if refresh else None

        timeout = 420
        try:
            shard_runs, refresh = wait_for(settled, timeout, "the automation's shard and global runs for the dropped file")
        except AssertionError:
            runs = [(r["status"], tag(r, "dagster/partition"), [a["path"][0] for a in r["assetSelection"] or []]) for r in all_runs(port)]
            raise AssertionError(f"after {timeout}s the runs are {runs}; daemon log:\n{(tmp_path / 'daemon.log').read_text()[-3000:]}") from None
        assert all(tag(r, "dagster/sensor_name") in ("landing_sensor", "curation_automation") for r in shard_runs + refresh), shard_runs + refresh
        mats = gql(port, METADATA, {"key": ["raw_pool"], "partitions": [new]})["assetNodes"][0]["assetMaterializations"]
        assert [m["runId"] for m in mats] == [r["runId"] for r in shard_runs if tag(r, "dagster/sensor_name") == "landing_sensor"]
        print(f"growth: dropped file to refreshed subset in {time.time() - started:.0f}s (at {time.time() - t0:.0f}s)")
        new_rows = pl.read_parquet(assets / "raw_pool" / f"{new}.parquet")["row_id"]
        assert new_rows.len() > 0
        assert set(new_rows) <= set(pl.read_parquet(assets / "normalized_tags.parquet")["row_id"])
        assert set(new_rows) <= set(pl.read_parquet(assets / "selection_reasons.parquet")["row_id"])
        assert set(new_rows) == set(pl.read_parquet(assets / "instance_scores" / f"{new}.parquet")["row_id"])
        # The automation's runs used the config's models and settings.
        [mat] = gql(port, METADATA, {"key": ["instance_scores"], "partitions": [new]})["assetNodes"][0]["assetMaterializations"]
        scorer = json.loads(next(e["jsonString"] for e in mat["metadataEntries"] if e["label"] == "scorer"))
        assert scorer["model"] == str(DEMO / "scorer")
        [mat] = gql(port, METADATA, {"key": ["open_tags"], "partitions": [new]})["assetNodes"][0]["assetMaterializations"]
        assert json.loads(next(e["jsonString"] for e in mat["metadataEntries"] if e["label"] == "tagger"))["backend"] == "keyphrase"
        reasons = pl.read_parquet(assets / "selection_reasons.parquet")
        # ... and the config's selection settings (not the code defaults: budget 0.05, no target file).
        assert set(reasons["strategy"]) == {"tags"} and reasons["budget_rule"][0].startswith(f"0.1 of {reasons.height} candidates")

        # 4. A changed setting shows in the UI after a reload: the launchpad's defaults.
        before = launchpad_defaults(port, ["selected_subset", "selection_reasons"])
        assert before["ops"]["selected_subset"]["config"]["budget"] == 0.1
        config.write_text(config.read_text().replace("budget: 0.1", "budget: 0.25"))
        reloaded = gql(port, RELOAD, {"location": "curation"})["reloadRepositoryLocation"]
        assert reloaded["__typename"] == "WorkspaceLocationEntry", reloaded
        wait_for(lambda: all(e["loadStatus"] == "LOADED" for e in gql(port, LOCATIONS)["workspaceOrError"]["locationEntries"]), 180, "the reload")
        after = launchpad_defaults(port, ["selected_subset", "selection_reasons"])
        assert after["ops"]["selected_subset"]["config"]["budget"] == 0.25
        assert after["ops"]["selected_subset"]["config"]["strategy"] == before["ops"]["selected_subset"]["config"]["strategy"]
        print(f"reloaded: {time.time() - t0:.0f}s")
