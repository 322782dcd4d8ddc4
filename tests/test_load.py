"""Files landing while runs are in flight, through the landing sensor and the daemon: every file
lands exactly once and every shard reconciles (benchmarks/bench_load.py with a small load)."""

import pytest

from benchmarks.bench_load import run_load

pytestmark = pytest.mark.slow


def test_files_landing_during_runs_land_once_and_reconcile(tmp_path, monkeypatch):
    for key in ("DAGSTER_HOME", "CURATION_CONFIG", "CURATION_HOME", "CURATION_LANDING_INTERVAL", "CURATION_AUTOMATION"):
        monkeypatch.delenv(key, raising=False)  # run_load sets them; monkeypatch restores them after
        monkeypatch.setenv(key, "")
    report = run_load(files=6, rows=8, waves=2, timeout=1200, workdir=tmp_path)
    assert report["ok"], report
    assert report["max_runs_in_flight"] >= 2 and report["runs"] == 6
    # Files 1..5 each repeat two conversations of the file before: one canonical copy each, in the file landed first.
    assert report["conversations_shared_across_files"] == report["shared_with_one_canonical_copy"] == report["shared_canonical_in_first_landed_file"] == 10
