"""Faults: writes that die midway, shards in flight together, corrupt intermediates, symlinks out
of the landing folder, failed shards in the headless summary, a killed run (issue 12 items 1-5, issue 10 item 4)."""

import json
import os
import re
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from conftest import land, project_dagster_home
from servers import wait_for
from curation_assets.raw_pool import raw_pool

DEMO = Path(__file__).resolve().parents[1] / "demo"
ROOT = Path(__file__).resolve().parents[1]


def headless_config(path: Path, instance_scores: str) -> Path:
    """A `curate run` config over the tiny GPT-2 scorer: IFD scores, then top_k on half the pool."""
    path.write_text(
        f"resources:\n  scorer: {{model: {ROOT / 'tests' / 'fixtures' / 'tiny_gpt2'}}}\n  landing: {{min_age_seconds: 0}}\n"
        f"assets:\n  normalized_tags: {{alpha: 1, n_clusters: 2}}\n  instance_scores: {instance_scores}\n"
        "  selected_subset: {strategy: top_k, budget: 0.5, neighbours: false}\n"
    )
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def errors_of(result) -> str:
    """Every message in the failed steps' error chains."""
    text = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            text.append(error.message)
            error = error.cause
    return "\n".join(text)


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("lazy", [False, True])
def test_a_write_that_dies_midway_leaves_the_previous_file_whole(tmp_path, resources, instance, monkeypatch, lazy):
    rows = {"x": list(range(5000))}

    @dg.asset
    def table() -> pl.LazyFrame if lazy else pl.DataFrame:
        return pl.LazyFrame(rows) if lazy else pl.DataFrame(rows)

    assert dg.materialize([table], resources=resources, instance=instance).success
    path = resources["storage"].asset_file("table")
    assert pl.read_parquet(path).height == 5000

    # The disk fills up halfway through the next write of the same file, whichever writer it uses.
    def dies_midway(real):
        def write(self, target, *args, **kwargs):
            real(self, target, *args, **kwargs)
            with open(target, "r+b") as f:
                f.truncate(os.path.getsize(target) // 2)
            raise OSError(28, "No space left on device")

        return write

    monkeypatch.setattr(pl.DataFrame, "write_parquet", dies_midway(pl.DataFrame.write_parquet))
    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", dies_midway(pl.LazyFrame.sink_parquet))
    assert not dg.materialize([table], resources=resources, instance=instance, raise_on_error=False).success
    monkeypatch.undo()
    assert pl.read_parquet(path).height == 5000  # the old file, whole
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


# --------------------------------------------------------------------------- identity across files


IN_FLIGHT = """
import sys, time
from pathlib import Path
import dagster as dg
from curation_assets import raw_pool as module
from curation_assets.definitions import build_resources

home, key, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
real = module.ingest_file

def ingest_together(*args, **kwargs):  # hold until the other shard's run is in flight too
    summary = real(*args, **kwargs)
    (ready / key.replace("/", "_")).touch()
    deadline = time.time() + 300
    while len(list(ready.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.1)
    return summary

module.ingest_file = ingest_together
with dg.DagsterInstance.get() as instance:
    result = dg.materialize([module.raw_pool], resources=build_resources(home), partition_key=key, instance=instance, raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


@pytest.mark.slow
def test_overlapping_shards_in_flight_together_give_one_canonical_copy(tmp_path, resources, monkeypatch):
    """Two processes materialize overlapping shards at once (each holds until the other is in
    flight, as the daemon's concurrent runs do): the shared conversations get one canonical copy,
    the one landed first, and `curate why` says so."""
    import subprocess
    import sys

    from curation_assets.shards import identity_counts, pool_rows
    from curation_assets.why import story

    dagster_home = project_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    storage = resources["storage"]
    shared = [{"instruction": f"Shared question {i}?", "output": f"Answer {i}."} for i in range(5)]
    a = land(resources, write_jsonl(tmp_path / "a.jsonl", shared + [{"instruction": "Only in a?", "output": "Yes."}]))
    b = land(resources, write_jsonl(tmp_path / "b.jsonl", [{"instruction": "Only in b?", "output": "Yes."}] + shared[::-1]))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("pool_shards", [a, b])
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-c", IN_FLIGHT, str(storage.root), key, str(ready)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for key in (b, a)]
    outputs = [run.communicate(timeout=400)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(o[-2000:] for o in outputs)

    pool = storage.scan_partitions("raw_pool")
    canonical = pool_rows(pool).collect()
    assert canonical.height == 7 and canonical["row_id"].n_unique() == 7
    first_landed, later = (a, b) if storage.landed_manifest(a)["landed_at"] <= storage.landed_manifest(b)["landed_at"] else (b, a)
    assert set(canonical.filter(pl.col("instruction").str.starts_with("Shared"))["source_partition"]) == {first_landed}
    assert identity_counts(pool) == {"stored_rows": 12, "canonical_rows": 7, "duplicates_within_file": 0, "duplicates_across_files": 5}
    # `curate why` names the one canonical copy and the one duplicate of it.
    text = story(storage, canonical.filter(pl.col("instruction") == "Shared question 2?")["row_id"][0])
    assert f"(shard {first_landed}," in text
    assert text.count("duplicate copy:") == 1 and f"-> first copy {first_landed}#" in text


# --------------------------------------------------------------------------- corruption


def test_a_truncated_shard_file_fails_with_its_path_and_the_repair_command(tmp_path, resources, instance):
    from curation_assets.open_tags import open_tags
    from resources.storage import CorruptIntermediateError

    key = land(resources, write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(20)]))
    instance.add_dynamic_partitions("pool_shards", [key])
    assert dg.materialize([raw_pool], resources=resources, partition_key=key, instance=instance).success
    storage = resources["storage"]
    path = storage.asset_file("raw_pool", key)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)

    # A per-shard step that reads it through the IO manager.
    result = dg.materialize([raw_pool, open_tags], resources=resources, partition_key=key, instance=instance, selection=[open_tags.key], raise_on_error=False)
    assert not result.success
    message = errors_of(result)
    assert str(path) in message and f"curate run --home {storage.root}" in message
    # A global step that reads every shard from storage.
    with pytest.raises(CorruptIntermediateError, match="curate run --home"):
        storage.scan_partitions("raw_pool")


# --------------------------------------------------------------------------- symlinks


def test_landing_follows_no_symlink_out_of_the_landing_folder(tmp_path, instance):
    from curation_assets.landing import scan_landing

    home = tmp_path / "home"
    landing, landed = home / "landing", home / "landed"
    (landing / "sub").mkdir(parents=True)
    outside = tmp_path / "private"
    outside.mkdir()
    write_jsonl(outside / "secret.jsonl", [{"prompt": "secret", "completion": "do not ingest"}])
    write_jsonl(landing / "sub" / "ok.jsonl", [{"prompt": "p", "completion": "c"}])
    (landing / "link_to_file.jsonl").symlink_to(outside / "secret.jsonl")
    (landing / "link_to_folder").symlink_to(outside, target_is_directory=True)
    (landing / "link_inside.jsonl").symlink_to(landing / "sub" / "ok.jsonl")  # inside: same content, landed once
    before = sorted(p.name for p in outside.iterdir())

    new, _ = scan_landing(landing, landed, {}, set(), min_age_seconds=0)
    [only] = new  # the real file, once (the link inside the folder has the same content)
    assert only.source_path in {"sub/ok.jsonl", "link_inside.jsonl"}
    assert not any("secret" in p.name for p in landed.rglob("*"))
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written outside the data folder

    from curation_assets.headless import data_files

    assert [name for _, name in data_files([landing])] == ["link_inside.jsonl", "sub/ok.jsonl"]


# --------------------------------------------------------------------------- headless summary and repair


def test_headless_summary_tells_the_truth_and_a_rerun_repairs(tmp_path, monkeypatch, capsys):
    """A shard whose instance_scores fails: the summary's per-shard table says so, the global assets
    run without it (its rows are not in the selection) and the exit code is 1. A truncated output
    is re-materialized by the next `curate run`, which then exits 0."""
    import dataclasses

    from curation_assets.cli import main
    from curation_assets.methods import registry

    dagster_home = project_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    home = tmp_path / "home"
    config = headless_config(tmp_path / "config.yaml", "{methods: [ifd]}")
    pool = tmp_path / "pool"
    pool.mkdir()
    write_jsonl(pool / "good.jsonl", [{"instruction": f"Explain topic {i} clearly.", "output": f"Topic {i} is simple."} for i in range(8)])
    write_jsonl(pool / "bad.jsonl", [{"instruction": f"POISON question {i}?", "output": f"Reply {i}."} for i in range(4)])

    real = registry.SCORE_METHODS["ifd"]

    def fails_on_poison(rows, settings, model):
        if rows["instruction"].str.contains("POISON").any():
            raise RuntimeError("scorer crashed on this shard")
        return real.compute(rows, settings, model)

    monkeypatch.setitem(registry.SCORE_METHODS, "ifd", dataclasses.replace(real, compute=fails_on_poison))
    assert main(["run", str(pool), "--config", str(config), "--home", str(home)]) == 1
    err = capsys.readouterr().err
    [bad_line] = [line for line in err.splitlines() if line.startswith("bad.jsonl@")]
    assert "FAILED" in bad_line and "scorer crashed on this shard" in bad_line
    assert any(line.startswith("good.jsonl@") and " ok " in line for line in err.splitlines())
    assert "global assets: ok WITHOUT 1 shard(s)" in err and "bad.jsonl@" in err.split("WITHOUT")[-1]
    reasons = pl.read_parquet(home / "assets" / "selection_reasons.parquet")
    pool_rows = pl.read_parquet(home / "assets" / "raw_pool" / "*.parquet")
    assert reasons.height == 8
    assert reasons.join(pool_rows.filter(pl.col("instruction").str.contains("POISON")), on="row_id", how="semi").is_empty()

    # The fault is gone and the good shard's scores were truncated: a plain `curate run` repairs both.
    monkeypatch.setitem(registry.SCORE_METHODS, "ifd", real)
    [good_scores] = (home / "assets" / "instance_scores").glob("good.jsonl@*.parquet")
    with open(good_scores, "r+b") as f:
        f.truncate(good_scores.stat().st_size // 2)
    assert main(["run", "--config", str(config), "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "global assets: ok" in out and "WITHOUT" not in out
    assert sum(line.startswith(("good.jsonl@", "bad.jsonl@")) and " ok " in line for line in out.splitlines()) == 2
    assert pl.read_parquet(good_scores).height == 8
    assert pl.read_parquet(home / "assets" / "selection_reasons.parquet").height == 12


# --------------------------------------------------------------------------- killed runs


def ifd_scoring_setup(tmp_path, monkeypatch, n: int):
    """A project instance, an IFD-only headless config scoring 4 rows a chunk and a pool of `n` rows:
    (data home, config, pool file, environment for the subprocesses)."""
    dagster_home = project_dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    config = headless_config(tmp_path / "config.yaml", "{methods: [ifd], chunk_rows: 4}")
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": f"Question number {i} about item {i * 7}?", "output": f"Answer {i}, at length: " + "word " * (i % 30)} for i in range(n)])
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return tmp_path / "home", config, pool, env


@pytest.mark.slow
def test_a_killed_headless_run_frees_its_slot_and_the_rerun_loses_and_repeats_nothing(tmp_path, monkeypatch):
    """SIGKILL `curate run` (the run's parent: in-process, it also runs the step) in the middle of
    instance_scores. The run is left STARTED with its `gpu` slot claimed; the next `curate run`
    fails it, frees the slot, scores only the rows not yet scored, and finishes."""
    import signal
    import subprocess
    import sys

    n = 400
    home, config, pool, env = ifd_scoring_setup(tmp_path, monkeypatch, n)
    command = [sys.executable, "-m", "curation_assets.cli", "run", "--config", str(config), "--home", str(home)]
    cache = home / "cache" / "instance_scores" / "ifd"

    def parts() -> list[Path]:  # result parts, not the row cache's index
        return [p for p in cache.rglob("*.parquet") if p.name != "index.parquet"]

    def cached_rows() -> int:
        return sum(pl.read_parquet(p).height for p in parts())

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command + [str(pool)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: first.poll() is not None or parts(), 400, "the first scored chunk", every=0.2)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=60)
    scored_before = cached_rows()
    assert 0 < scored_before < n, (tmp_path / "first.log").read_text()[-3000:]

    instance = dg.DagsterInstance.get()
    [dead] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots  # the slot every later run would wait for

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    # Failing the dead run frees its slot (Dagster releases a failed run's slots; recovery frees any
    # a finished run still holds), so the re-run got the slot instead of waiting forever.
    assert f"run {dead.run_id}: its process" in second.stdout
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots

    # Nothing lost, nothing computed twice: every row scored once, the earlier chunks reused (each
    # computed chunk is appended to the cache, so a row scored again would appear twice there).
    [scores_file] = (home / "assets" / "instance_scores").glob("*.parquet")
    scores = pl.read_parquet(scores_file)
    assert scores.height == n and scores["row_id"].n_unique() == n and scores["ifd_ppl"].null_count() == 0
    stored = pl.concat([pl.read_parquet(p) for p in parts()])
    assert stored.height == n and stored["row_id"].n_unique() == n
    assert pl.read_parquet(home / "assets" / "selection_reasons.parquet").height == n


# A run as the daemon's run workers execute it: the multiprocess executor, each step in its own
# (spawned) process, the job rebuilt from the project config as on a cluster worker. The guard
# matters: a spawned step process imports this script again.
STEP_PROCESS_DRIVER = """
import sys
from pathlib import Path

import dagster as dg

from curation_assets.definitions import SHARD_JOB, project_definitions
from curation_assets.headless import RUN_CONFIG
from curation_assets.landing import land_file
from curation_assets.partitions import pool_shards
from curation_assets.project import ProjectConfig

if __name__ == "__main__":
    config_path, home, pool = sys.argv[1:4]
    project = ProjectConfig.load(config_path)
    project.home = home
    storage = project_definitions(project).resources["storage"]
    shard = land_file(Path(pool), storage.landed, Path(pool).name)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(pool_shards.name, [shard.partition])
        job = dg.build_reconstructable_job("curation_assets.definitions", "cluster_job",
                                           reconstructable_kwargs={"name": SHARD_JOB, "home": home, "config_path": config_path})
        keys = [dg.AssetKey("raw_pool"), dg.AssetKey("raw_pool_quarantine"), dg.AssetKey("instance_scores")]
        with dg.execute_job(job, instance, run_config=RUN_CONFIG, tags={"dagster/partition": shard.partition}, asset_selection=keys) as result:
            print("run", result.run_id, "success" if result.success else "failed", flush=True)
"""


@pytest.mark.slow
def test_a_killed_step_process_is_retried_and_scores_only_the_rest(tmp_path, monkeypatch):
    """SIGKILL the process executing instance_scores (the multiprocess executor's step process, as
    under the daemon) while its rows are being scored: the run's own process survives, the step's
    RetryPolicy starts it again, and the retry scores only the rows the killed step had not cached."""
    import signal
    import subprocess
    import sys

    import psutil

    n = 600
    home, config, pool, env = ifd_scoring_setup(tmp_path, monkeypatch, n)
    cache = home / "cache" / "instance_scores" / "ifd"

    def parts() -> list[Path]:
        return [p for p in cache.rglob("*.parquet") if p.name != "index.parquet"]

    driver = tmp_path / "driver.py"
    driver.write_text(STEP_PROCESS_DRIVER)
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen([sys.executable, str(driver), str(config), str(home), str(pool)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: run.poll() is not None or parts(), 600, "the first scored chunk", every=0.05)
            # The step process: the Python descendant of the run's process whose only children are
            # helpers (not the forkserver, a resource tracker, the compute logs' `tail` or orphan watcher).
            def is_helper(p: psutil.Process) -> bool:
                command = p.cmdline()
                return "python" not in command[0] or any("resource_tracker" in c or "watch_orphans" in c for c in command)

            def is_step(p: psutil.Process) -> bool:
                return not is_helper(p) and all(is_helper(c) for c in p.children())

            steps = [p for p in psutil.Process(run.pid).children(recursive=True) if is_step(p)]
            assert len(steps) == 1, [(p.pid, p.ppid(), p.name(), p.cmdline()[:3]) for p in psutil.Process(run.pid).children(recursive=True)]
            steps[0].send_signal(signal.SIGKILL)
            psutil.wait_procs([steps[0]], timeout=30)
            scored_when_killed = sum(pl.read_parquet(p).height for p in parts())
            assert run.wait(timeout=600) == 0  # the run's process lives on
        finally:
            if run.poll() is None:
                run.kill()
    log_text = (tmp_path / "run.log").read_text()
    instance = dg.DagsterInstance.get()
    [run_record] = instance.get_runs()
    assert [line for line in log_text.splitlines() if line.startswith("run ")] == [f"run {run_record.run_id} success"], log_text[-3000:]
    assert run_record.status == dg.DagsterRunStatus.SUCCESS
    workers = instance.all_logs(run_record.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED)
    assert [e.step_key for e in workers].count("instance_scores") == 2  # the killed attempt and its retry
    assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots

    # The first attempt's progress lines count all canonical rows, the retry's only those left.
    totals = [int(m) for m in re.findall(r"ifd: computed \d+/(\d+) rows", log_text)]
    canonical = totals[0]
    assert 0 < scored_when_killed < canonical and totals[-1] == canonical - scored_when_killed, (scored_when_killed, sorted(set(totals)))
    [scores_file] = (home / "assets" / "instance_scores").glob("*.parquet")
    scores = pl.read_parquet(scores_file)
    assert scores.height == canonical and scores["row_id"].n_unique() == canonical and scores["ifd_ppl"].null_count() == 0
    stored = pl.concat([pl.read_parquet(p) for p in parts()])
    assert stored.height == canonical and stored["row_id"].n_unique() == canonical  # no row scored twice

