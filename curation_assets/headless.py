"""Run the whole graph without the UI: land files, materialize each new shard, then the global assets.

Runs go through a real Dagster instance (the one `dagster dev` uses from the same folder), so
everything done headless shows up in the UI afterwards.
"""

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from curation_assets.landing import LandedFile, files_inside, land_file
from curation_assets.methods.ingest import is_data_file
from curation_assets.partitions import pool_shards
from curation_assets.recovery import process_tags, recover_dead_runs
from curation_assets.shards import complete_shards
from resources.storage import readable_parquet
from curation_assets.project import ProjectConfig


def open_instance() -> dg.DagsterInstance:
    """`$DAGSTER_HOME` if set; else `.dagster_home` beside the `dagster.yaml` of the working folder."""
    if os.getenv("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    cwd = Path.cwd()
    base = cwd / ".dagster_home"
    base.mkdir(exist_ok=True)
    # The project's dagster.yaml puts every store under .dagster_home/; without it, .dagster_home is the instance.
    return dg.DagsterInstance.from_config(str(cwd if (cwd / "dagster.yaml").exists() else base))


def data_files(paths: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(file, name to land it under) for files and folders (searched recursively)."""
    found = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path.is_dir():
            found += [(p, p.relative_to(path).as_posix()) for p in files_inside(path) if is_data_file(p)]
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    return found


# Slow assets a headless run materializes only when the config lists them under `assets:`.
OPT_IN = {"subset_model", "subset_evaluation"}

# The headless run reads the project config (curation_assets/project.py), as the UI does.
RunConfig = ProjectConfig

RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class RunReport:
    landed: list[LandedFile]
    shard_runs: dict[str, bool]
    global_run: bool | None
    home: Path
    shard_errors: dict[str, str] = field(default_factory=dict)
    skipped_shards: list[str] = field(default_factory=list)  # left out of the global assets
    recovered_runs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.shard_runs.values()) and not self.skipped_shards and self.global_run is not False

    def summary(self) -> str:
        """A per-shard table, then the global assets' outcome, saying which shards they left out."""
        lines = []
        if self.shard_runs:
            width = max(len(p) for p in self.shard_runs)
            lines += [f"{'shard':<{width}}  status  error", f"{'-' * width}  ------  -----"]
            for partition, ok in self.shard_runs.items():
                lines.append(f"{partition:<{width}}  {'ok' if ok else 'FAILED':<6}  {self.shard_errors.get(partition, '')}")
        if self.global_run is None:
            lines.append("global assets: not run")
        elif not self.global_run:
            lines.append("global assets: FAILED (see the run in the UI)")
        elif self.skipped_shards:
            lines.append(f"global assets: ok WITHOUT {len(self.skipped_shards)} shard(s) whose outputs are missing: {', '.join(self.skipped_shards)}")
        else:
            lines.append("global assets: ok")
        return "\n".join(lines)


def run_graph(
    paths: Iterable[str | Path],
    config: ProjectConfig | None = None,
    *,
    refresh: bool = False,
    instance: dg.DagsterInstance | None = None,
    log: Callable[[str], None] = print,
) -> RunReport:
    from curation_assets.definitions import OPTIONAL_ASSETS, project_definitions
    from curation_assets.selected_subset import needed_assets

    config = config if config is not None else ProjectConfig.load(None)
    defs = project_definitions(config)
    storage = defs.resources["storage"]
    instance = instance or open_instance()
    # A run of an earlier `curate run` that was killed would hold its pool slot forever.
    recovered = recover_dead_runs(instance, log)

    landed = [land_file(path, storage.landed, name) for path, name in data_files(paths)]
    known = set(instance.get_dynamic_partitions(pool_shards.name))
    new = sorted({f.partition for f in landed} - known)
    if new:
        instance.add_dynamic_partitions(pool_shards.name, new)
    for f in landed:
        log(f"landed {f.source_path} as shard {f.partition}")

    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    # Targeted selection's assets run only when the configured strategy reads them, in their own
    # order: the gradient store's shards need the warm-up, a global asset over every raw_pool shard.
    wanted = needed_assets(config.assets.get("selected_subset"))
    optional = {dg.AssetKey(name) for name in OPTIONAL_ASSETS}
    shard_keys = [k for k in graph.toposorted_asset_keys if graph.get(k).partitions_def == pool_shards and k not in optional]
    global_keys = [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable and graph.get(k).partitions_def is None
                   and k not in optional and (k.to_user_string() not in OPT_IN or k.to_user_string() in config.assets)]

    tags = process_tags()
    shard_runs: dict[str, bool] = {}
    errors: dict[str, str] = {}
    partitions = sorted(instance.get_dynamic_partitions(pool_shards.name))

    def run_shards(keys: list[dg.AssetKey]) -> None:
        from tqdm import tqdm

        materialized = {k: _materialized(instance, k, graph.get(k).code_version) for k in keys}
        # A progress bar over the shards on a terminal (stderr); none when output is piped or logged.
        for partition in tqdm(partitions, desc=", ".join(k.to_user_string() for k in keys), unit="shard", disable=None, leave=False):
            todo = keys if refresh else _to_materialize(materialized, storage, graph, keys, partition)
            if not todo:
                continue
            success, error = _execute(job, instance, config, asset_selection=todo, run_config=RUN_CONFIG, partition_key=partition, tags=tags)
            shard_runs[partition] = shard_runs.get(partition, True) and success
            if not success:
                errors.setdefault(partition, error)
            log(f"shard {partition} ({', '.join(k.to_user_string() for k in todo)}): {'ok' if success else 'FAILED: ' + error}")

    run_shards(shard_keys)
    global_run = None
    skipped: list[str] = []
    if "warmup_adapter" in wanted:
        warmup = [dg.AssetKey("query_set"), dg.AssetKey("warmup_adapter")]
        global_run, error = _execute(job, instance, config, asset_selection=warmup, run_config=RUN_CONFIG, tags=tags)
        log(f"query_set, warmup_adapter: {'ok' if global_run else 'FAILED: ' + error}")
        if global_run:
            run_shards([dg.AssetKey("gradient_store")])
    elif "query_set" in wanted:
        global_keys = [dg.AssetKey("query_set"), *global_keys]
    if global_keys and global_run is not False:
        global_run, error = _execute(job, instance, config, asset_selection=global_keys, run_config=RUN_CONFIG, tags=tags)
        # The shards the global assets left out: those missing an output of a per-shard asset.
        _, skipped = complete_shards(storage, partitions, [k.to_user_string() for k in shard_keys])
        log(f"global assets: {'ok' if global_run else 'FAILED: ' + error}")
    return RunReport(landed, shard_runs, global_run, storage.root, errors, skipped, recovered)


def _execute(job, instance, config, *, asset_selection, run_config, partition_key=None, tags=None) -> tuple[bool, str]:
    """Run in this process, or, with `CURATION_EXECUTOR=celery`, as a run of the project's named
    job whose steps the cluster workers execute (they rebuild it from `config`, which the run
    carries). Returns success and, on failure, the first error."""
    if os.environ.get("CURATION_EXECUTOR", "multiprocess") != "celery":
        result = job.execute_in_process(
            instance=instance, partition_key=partition_key, asset_selection=asset_selection, run_config=run_config, tags=tags, raise_on_error=False
        )
        return result.success, "" if result.success else _first_error(result)
    tags = {**(tags or {}), **({"dagster/partition": partition_key} if partition_key else {})}
    from curation_assets.definitions import GLOBAL_JOB, SHARD_JOB

    settings = {"config_path": str(config.path)} if config.path else {"resources": config.resources, "assets": config.assets}
    recon = dg.build_reconstructable_job(
        "curation_assets.definitions", "cluster_job", reconstructable_kwargs={"name": SHARD_JOB if partition_key else GLOBAL_JOB, "home": config.home, **settings}
    )
    with dg.execute_job(recon, instance, run_config=run_config, tags=tags, asset_selection=asset_selection, raise_on_error=False) as result:
        return result.success, "" if result.success else _first_error(result)


def _first_error(result) -> str:
    """The first failed step and the first line of its error."""
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause  # under Dagster's wrappers (retries exceeded, input loading): the root cause
        message = (error.message if error else "failed").strip().splitlines()[0]
        return f"{event.step_key}: {message[:300]}"
    failure = result.get_run_failure_event()
    return failure.message if failure else "the run failed"


def _to_materialize(materialized: dict, storage, graph, keys: list[dg.AssetKey], partition: str) -> list[dg.AssetKey]:
    """Per-shard assets of `partition` to (re-)materialize: those never materialized, or whose
    stored file is missing or unreadable (a crash, a truncated copy), and everything downstream of
    them in the shard. Whole multi-asset nodes, since they cannot be split."""
    stale = set()
    for key in keys:
        path = storage.asset_file(key.to_user_string(), partition)
        if partition not in materialized[key] or not path.exists() or not readable_parquet(path):
            stale.add(key)
    while True:
        grown = set(stale)
        for key in keys:
            if key in grown or any(parent in grown for parent in graph.get(key).parent_keys):
                grown |= set(graph.assets_def_for_key(key).keys) & set(keys)
        if grown == stale:
            break
        stale = grown
    return [k for k in keys if k in stale]


def _materialized(instance: dg.DagsterInstance, key: dg.AssetKey, code_version: str | None) -> set[str]:
    """Partitions of `key` materialized, by its current code version where it has one (a changed
    method VERSION or setting makes the shard's scores stale)."""
    if code_version is None:
        return set(instance.get_materialized_partitions(key))
    latest: dict[str, str | None] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000, cursor=cursor, ascending=False)
        for record in page.records:
            m = record.asset_materialization
            if m is not None and m.partition is not None and m.partition not in latest:
                latest[m.partition] = (m.tags or {}).get("dagster/code_version")
        if not page.has_more:
            break
        cursor = page.cursor
    return {p for p, v in latest.items() if v == code_version}
