"""Files landing while runs are in flight, through the landing sensor and the daemon: every file
lands exactly once and every shard reconciles (benchmarks/bench_load.py with a small load)."""

import os

import pytest

from benchmarks.bench_load import run_load

# Off by default until verified in CI on this machine type: CURATION_DEPLOY_TESTS=1 runs it.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CURATION_DEPLOY_TESTS") != "1", reason="deployment test: set CURATION_DEPLOY_TESTS=1"),
]


def test_files_landing_during_runs_land_once_and_reconcile(tmp_path, monkeypatch):
    for key in ("DAGSTER_HOME", "CURATION_HOME", "CURATION_LANDING_INTERVAL", "CURATION_AUTOMATION"):
        monkeypatch.delenv(key, raising=False)  # run_load sets them; monkeypatch restores them after
        monkeypatch.setenv(key, "")
    report = run_load(files=8, rows=10, waves=2, timeout=1500, workdir=tmp_path)
    assert report["ok"], report
    assert report["max_runs_in_flight"] >= 2 and report["runs"] == 8
