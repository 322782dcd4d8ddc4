"""The UI path: webserver and daemon as separate processes, a landed file, and the Materialize button
(the GraphQL mutation the UI sends) launching raw_pool for that partition until it succeeds."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
ASSET = """
query Asset { assetNodes(assetKeys: [{path: ["raw_pool"]}]) { partitionKeys opName jobNames
  repository { name location { name } } } }"""
RUN = """query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status tags { key value } } } }"""
RUNS = """query Runs { runsOrError { ... on Runs { results { runId status tags { key value } } } } }"""
METADATA = """
query Mat($partition: String!) { assetNodes(assetKeys: [{path: ["raw_pool"]}]) {
  assetMaterializations(partitions: [$partition]) { metadataEntries { label } } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gql(port, query, variables=None):
    response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_materialize_button_through_webserver_and_daemon(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # the project's instance settings
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CURATION_HOME": str(tmp_path / "curation"),
        "CURATION_LANDING_INTERVAL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    workspace = str(ROOT / "workspace.yaml")
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("webserver", "daemon")}
    procs = [
        subprocess.Popen([BIN / "dagster-webserver", "-w", workspace, "-h", "127.0.0.1", "-p", str(port)],
                         cwd=home, env=env, stdout=logs["webserver"], stderr=subprocess.STDOUT),
        subprocess.Popen([BIN / "dagster-daemon", "run", "-w", workspace],
                         cwd=home, env=env, stdout=logs["daemon"], stderr=subprocess.STDOUT),
    ]
    try:
        def up():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, "the webserver")
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
            runs = gql(port, RUNS)["runsOrError"]["results"]
            return [r for r in runs if {"key": "dagster/sensor_name", "value": "landing_sensor"} in r["tags"]]

        wait_for(lambda: sensor_runs() and sensor_runs()[0]["status"] == "SUCCESS", 240, "the sensor's run")
        assert len(sensor_runs()) == 1

        # The Materialize button: launch raw_pool for that partition through GraphQL.
        params = {
            "selector": {
                "repositoryLocationName": node["repository"]["location"]["name"],
                "repositoryName": node["repository"]["name"],
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": ["raw_pool"]}, {"path": ["raw_pool_quarantine"]}],
            },
            "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
            "runConfigData": {},
        }
        launched = gql(port, LAUNCH, {"params": params})["launchPipelineExecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        status = wait_for(
            lambda: (s := gql(port, RUN, {"id": run_id})["runOrError"]["status"]) in ("SUCCESS", "FAILURE", "CANCELED") and s,
            240,
            "the launched run",
        )
        assert status == "SUCCESS", (tmp_path / "daemon.log").read_text()[-3000:]

        mats = gql(port, METADATA, {"partition": partition})["assetNodes"][0]["assetMaterializations"]
        labels = {e["label"] for e in mats[0]["metadataEntries"]}
        assert {"dagster/row_count", "preview", "lengths", "rows_per_shape", "quarantined"} <= labels
        assert len(mats) == 2  # the sensor's run and ours
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()
