"""Run the whole graph without the UI: land files, materialize each new shard, then the global assets.

Runs go through a real Dagster instance (the one `dagster dev` uses from the same folder), so
everything done headless shows up in the UI afterwards.
"""

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from curation_assets.landing import LandedFile, land_file
from curation_assets.methods.ingest import is_data_file
from curation_assets.partitions import pool_shards
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
            found += [(p, p.relative_to(path).as_posix()) for p in sorted(path.rglob("*")) if p.is_file() and is_data_file(p)]
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


def run_graph(
    paths: Iterable[str | Path],
    config: ProjectConfig | None = None,
    *,
    refresh: bool = False,
    instance: dg.DagsterInstance | None = None,
    log: Callable[[str], None] = print,
) -> RunReport:
    from curation_assets.definitions import project_definitions

    config = config if config is not None else ProjectConfig.load(None)
    defs = project_definitions(config)
    storage = defs.resources["storage"]
    instance = instance or open_instance()

    landed = [land_file(path, storage.landed, name) for path, name in data_files(paths)]
    known = set(instance.get_dynamic_partitions(pool_shards.name))
    new = sorted({f.partition for f in landed} - known)
    if new:
        instance.add_dynamic_partitions(pool_shards.name, new)
    for f in landed:
        log(f"landed {f.source_path} as shard {f.partition}")

    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    shard_keys = [k for k in graph.toposorted_asset_keys if graph.get(k).partitions_def == pool_shards]
    global_keys = [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable and graph.get(k).partitions_def is None
                   and (k.to_user_string() not in OPT_IN or k.to_user_string() in config.assets)]

    shard_runs: dict[str, bool] = {}
    done = set() if refresh else _materialized(instance, shard_keys)
    for partition in sorted(instance.get_dynamic_partitions(pool_shards.name)):
        if partition in done:
            continue
        success = _execute(job, instance, asset_selection=shard_keys, run_config=RUN_CONFIG, partition_key=partition)
        shard_runs[partition] = success
        log(f"shard {partition}: {'ok' if success else 'FAILED (see the run in the UI)'}")

    global_run = None
    if global_keys:
        global_run = _execute(job, instance, asset_selection=global_keys, run_config=RUN_CONFIG)
        log(f"global assets: {'ok' if global_run else 'FAILED (see the run in the UI)'}")
    return RunReport(landed, shard_runs, global_run, storage.root)


def _execute(job, instance, *, asset_selection, run_config, partition_key=None) -> bool:
    """Run in this process, or, with `CURATION_EXECUTOR=celery`, as a run whose steps the cluster
    workers execute (they rebuild the definitions from `CURATION_CONFIG`, as the code server does)."""
    if os.environ.get("CURATION_EXECUTOR", "multiprocess") != "celery":
        result = job.execute_in_process(
            instance=instance, partition_key=partition_key, asset_selection=asset_selection, run_config=run_config, raise_on_error=False
        )
        return result.success
    tags = {"dagster/partition": partition_key} if partition_key else None
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repository = ReconstructableRepository.for_module("curation_assets.definitions", "defs", working_directory=os.getcwd())
    with dg.execute_job(
        repository.get_reconstructable_job(job.name), instance, run_config=run_config, tags=tags, asset_selection=asset_selection, raise_on_error=False
    ) as result:
        return result.success


def _materialized(instance: dg.DagsterInstance, keys: list[dg.AssetKey]) -> set[str]:
    """Partitions where every per-shard asset is already materialized."""
    sets = [instance.get_materialized_partitions(k) for k in keys]
    return set.intersection(*map(set, sets)) if sets else set()
