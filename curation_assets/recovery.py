"""Runs whose process died: marked failed, and their concurrency-pool slots freed.

Runs launched from the UI or the daemon are watched by Dagster itself: the code server marks a run
failed when its worker process dies, run monitoring frees the slots of finished runs
(`free_slots_after_run_end_seconds` in dagster.yaml) and run retries re-launch runs that lost
their worker. A headless run (`curate run`) executes inside the CLI's own process, which nothing
else watches: killed, it stays STARTED and keeps its `gpu` slot, and every later run waits for that
slot forever. So headless runs carry their host and process in their tags, and `recover_dead_runs`
(run by `curate run` on start and by the `dead_run_sensor` every 30 s under the daemon) fails the
runs whose process is gone and frees every slot a finished run still holds.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import dagster as dg
import psutil

HOST_TAG = "curation/host"
PID_TAG = "curation/pid"
STARTED_TAG = "curation/process_started"  # guards against a reused pid
UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def process_tags() -> dict[str, str]:
    """Tags that tie a run to the process executing it in-process."""
    me = psutil.Process()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(me.pid), STARTED_TAG: f"{me.create_time():.2f}"}


def _process_gone(tags: dict[str, str]) -> bool:
    try:
        process = psutil.Process(int(tags[PID_TAG]))
        return f"{process.create_time():.2f}" != tags.get(STARTED_TAG) or process.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return True


def recover_dead_runs(instance: dg.DagsterInstance, log: Callable[[str], None] = lambda _: None) -> list[str]:
    """Fail this host's in-process runs whose process is gone, then free the slots held by every
    finished run. Returns the ids of the runs it failed."""
    failed = []
    records = instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: socket.gethostname()}))
    for record in records:
        run = record.dagster_run
        if str(os.getpid()) != run.tags.get(PID_TAG) and _process_gone(run.tags):
            instance.report_run_failed(run, message=f"the process that ran it (pid {run.tags.get(PID_TAG)}) is gone: it was killed or crashed")
            failed.append(run.run_id)
            log(f"run {run.run_id}: its process (pid {run.tags.get(PID_TAG)}) is gone; marked failed")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids():
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                freed = storage.free_concurrency_slots_for_run(run_id)
                if freed:
                    log(f"run {run_id}: freed {freed} concurrency slot(s) it still held")
    return failed


@dg.sensor(
    name="dead_run_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fails headless runs whose process died and frees the pool slots finished runs still hold.",
)
def dead_run_sensor(context: dg.SensorEvaluationContext):
    failed = recover_dead_runs(context.instance, context.log.info)
    return dg.SkipReason(f"failed {len(failed)} dead run(s)" if failed else "no dead runs")
