"""Load: files landing while runs are in flight, through the landing sensor and the daemon.

Drops `--files` JSON Lines files into the landing folder in `--waves` waves (each wave once the
previous one has runs in flight), with `dagster-daemon` running the landing sensor and the run
queue (SQLite instance, the project's 4 concurrent runs). Prints throughput, then checks that every
file landed exactly once (one partition, one landed copy, one run, one raw_pool materialization)
and that every shard reconciles (the blocking check passed, and pool + duplicates + quarantine =
the records written). Exit code 1 when a check fails.

    python benchmarks/bench_load.py --files 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import base_env, dagster_daemon  # noqa: E402

INSTANCE_YAML = """
storage:
  sqlite:
    base_dir: {home}/storage
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def write_pool_file(landing: Path, index: int, rows: int) -> int:
    """One file: `rows` good records (two repeat an earlier file's), one bad record; atomically."""
    records = [{"instruction": f"File {index}: explain item {j} briefly.", "output": f"Item {j} of file {index}."} for j in range(rows - 3)]
    if index:
        records += [{"instruction": f"File {index - 1}: explain item {j} briefly.", "output": f"Item {j} of file {index - 1}."} for j in range(2)]
    lines = [json.dumps(r) for r in records] + ['{"instruction": "broken']
    folder = landing / f"batch{index % 7}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".pool_{index:04d}.jsonl.part"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, folder / f"pool_{index:04d}.jsonl")
    return len(lines)


def shared_conversations(curation_home: Path, partitions: list[str]) -> dict:
    """Cross-file identity as the global steps decide it (shards.with_first_copy): per conversation
    stored in two files, how many canonical copies it has, and whether that copy is in the file that
    landed first (by its landing manifest), whatever order the runs finished in."""
    import polars as pl

    from curation_assets.shards import with_first_copy

    landed = {p: json.loads((curation_home / "landed" / p / "landing.json").read_text())["landed_at"] for p in partitions}
    pool = pl.scan_parquet([curation_home / "assets" / "raw_pool" / f"{p}.parquet" for p in partitions])
    rows = with_first_copy(pool).select("row_id", "source_partition", "first_copy").collect()
    rows = rows.with_columns(pl.col("source_partition").replace_strict(landed).alias("manifest_landed_at"))
    per_conversation = rows.group_by("row_id").agg(
        pl.col("source_partition").n_unique().alias("files"),
        pl.col("first_copy").is_null().sum().alias("canonical"),
        (pl.col("manifest_landed_at").filter(pl.col("first_copy").is_null()).first() == pl.col("manifest_landed_at").min()).alias("first_landed"),
    ).filter(pl.col("files") > 1)
    return {
        "shared": per_conversation.height,
        "one_canonical": int((per_conversation["canonical"] == 1).sum()),
        "first_landed": int(per_conversation["first_landed"].sum()),
    }


def run_load(files: int, rows: int, waves: int, timeout: float, workdir: Path) -> dict:
    import dagster as dg
    import polars as pl

    dagster_home, curation_home = workdir / "dagster_home", workdir / "curation"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(INSTANCE_YAML.format(home=dagster_home))
    # A config of its own: the daemon's code server starts in the project folder, whose curation.yaml
    # would otherwise put the data home (and the landing folder the sensor watches) there.
    config = workdir / "curation.yaml"
    config.write_text(f"home: {curation_home}\n")
    settings = {
        "DAGSTER_HOME": str(dagster_home),
        "CURATION_CONFIG": str(config),
        "CURATION_HOME": str(curation_home),
        "CURATION_LANDING_INTERVAL": "2",
        "CURATION_AUTOMATION": "off",
    }
    os.environ.update(settings)
    landing = curation_home / "landing"
    landing.mkdir(parents=True)
    written: dict[str, int] = {}
    logs = workdir / "logs"
    logs.mkdir()
    with dagster_daemon(base_env(settings), logs) as daemon, dg.DagsterInstance.get() as instance:
        start = time.time()
        per_wave = -(-files // waves)
        for wave in range(waves):
            for i in range(wave * per_wave, min(files, (wave + 1) * per_wave)):
                written[f"batch{i % 7}/pool_{i:04d}.jsonl"] = write_pool_file(landing, i, rows)
            if wave + 1 < waves:  # the next wave lands while this one's runs are in flight
                while not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
                    if time.time() - start > timeout or daemon.poll() is not None:
                        raise RuntimeError(f"no run started; see {logs}")
                    time.sleep(0.5)
        max_in_flight = 0
        while True:
            done = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]))
            active = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]))
            max_in_flight = max(max_in_flight, len(active))
            if len(done) >= files and not active and not instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED])):
                break
            if time.time() - start > timeout or daemon.poll() is not None:
                raise RuntimeError(f"{len(done)}/{files} runs finished after {time.time() - start:.0f}s; see {logs}")
            time.sleep(1)
        elapsed = time.time() - start

        runs = instance.get_runs()
        partitions = instance.get_dynamic_partitions("pool_shards")
        runs_per_partition: dict[str, int] = {}
        materializations: dict[str, int] = {}
        checks_passed: dict[str, bool] = {}
        for run in runs:
            key = run.tags.get("dagster/partition")
            runs_per_partition[key] = runs_per_partition.get(key, 0) + 1
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
                if entry.dagster_event.asset_key == dg.AssetKey("raw_pool"):
                    materializations[key] = materializations.get(key, 0) + 1
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
                checks_passed[key] = entry.dagster_event.event_specific_data.passed
        landed_dirs = [p for p in (curation_home / "landed").iterdir() if not p.name.startswith(".")]

        source_of = {json.loads((curation_home / "landed" / p / "landing.json").read_text())["source_path"]: p for p in partitions}
        recount_ok = 0
        for source, records in written.items():
            p = source_of.get(source)
            if p is None:
                continue
            pool = pl.read_parquet(curation_home / "assets" / "raw_pool" / f"{p}.parquet")
            quarantine = pl.read_parquet(curation_home / "assets" / "raw_pool_quarantine" / f"{p}.parquet")
            recount_ok += pool.height + quarantine.height == records and quarantine["reason"].to_list() == ["invalid_json"]
        shared = shared_conversations(curation_home, partitions)

    rows_total = sum(written.values())
    report = {
        "files": files,
        "records": rows_total,
        "seconds": round(elapsed, 1),
        "files_per_minute": round(files / elapsed * 60, 1),
        "records_per_second": round(rows_total / elapsed, 1),
        "max_runs_in_flight": max_in_flight,
        "partitions": len(partitions),
        "landed_copies": len(landed_dirs),
        "every_file_one_partition": sorted(source_of) == sorted(written),
        "runs": len(runs),
        "failed_runs": sum(r.status != dg.DagsterRunStatus.SUCCESS for r in runs),
        "partitions_with_one_run": sum(v == 1 for v in runs_per_partition.values()),
        "partitions_with_one_materialization": sum(v == 1 for v in materializations.values()),
        "shards_reconciled_by_check": sum(checks_passed.values()),
        "shards_reconciled_by_recount": recount_ok,
        # Each file repeats two of the previous file's conversations: across the pool, each of them
        # has exactly one canonical copy, the one in the file landed first, whatever order the runs took.
        "conversations_shared_across_files": shared["shared"],
        "shared_with_one_canonical_copy": shared["one_canonical"],
        "shared_canonical_in_first_landed_file": shared["first_landed"],
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    report["ok"] = (
        report["partitions"] == report["landed_copies"] == report["runs"] == files
        and report["every_file_one_partition"]
        and report["failed_runs"] == 0
        and report["partitions_with_one_run"] == report["partitions_with_one_materialization"] == files
        and report["shards_reconciled_by_check"] == report["shards_reconciled_by_recount"] == files
        and report["conversations_shared_across_files"] == 2 * (files - 1)
        and report["shared_with_one_canonical_copy"] == report["shared_canonical_in_first_landed_file"] == 2 * (files - 1)
    )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rows", type=int, default=50, help="records per file (one of them malformed)")
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="curation-load-") as tmp:
        report = run_load(args.files, args.rows, args.waves, args.timeout, Path(tmp))
    for key, value in report.items():
        print(f"{key:>36}: {value}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
