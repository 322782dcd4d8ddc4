"""When assets refresh: per-shard assets as soon as their shard lands; global assets (normalization,
tree, comparative scores, selection, export) once every shard is landed, tagged and scored, never
downstream of a failed step, and eagerly or on a cron for big pools.

Runs the automation launches carry no run config: the ops' config defaults, which definitions.py
sets from the project config, are what they run with.
"""

import os
from collections.abc import Iterable

import dagster as dg
import polars as pl

GLOBAL_LABEL = "global_refresh"


def eager_or_new_code() -> dg.AutomationCondition:
    """Dagster's `eager`, that also fires when the asset's code version changes (a method's
    VERSION or settings): stale results refresh without a manual run."""
    A = dg.AutomationCondition
    return (
        A.in_latest_time_window()
        & (A.newly_missing() | A.any_deps_updated() | A.code_version_changed()).since_last_handled()
        & ~A.any_deps_missing()
        & ~A.any_deps_in_progress()
        & ~A.in_progress()
    ).with_label("eager or new code version")


def global_refresh() -> dg.AutomationCondition:
    """Marks a global asset for the refresh rule above; `definitions.automate` replaces it with
    `global_condition` over the graph's per-shard assets."""
    return dg.AutomationCondition.eager().with_label(GLOBAL_LABEL)


def global_table(description: str, columns: dict[str, str]) -> dg.AssetOut:
    """An output of a global multi-asset: a Polars table in Parquet, refreshed by global_refresh;
    `columns` describe its columns (the IO manager puts them in the UI's column schema)."""
    return dg.AssetOut(description=description, dagster_type=pl.DataFrame, kinds={"parquet", "polars"}, automation_condition=global_refresh(),
                       metadata={"descriptions": columns})


def shard_refresh() -> dg.AutomationCondition:
    return eager_or_new_code()


def global_condition(shard_assets: Iterable[dg.AssetKey]) -> dg.AutomationCondition:
    """Refresh when an input or the code version changed (eager) or on `CURATION_REFRESH_CRON`, and only while

    - no partition of any per-shard asset is missing, running or failed (every new shard is landed,
      tagged and scored first, so one refresh covers it), and
    - no direct input's latest run failed (unless that input is being re-run in the same tick).
    """
    cron = os.environ.get("CURATION_REFRESH_CRON")
    trigger = (
        dg.AutomationCondition.on_cron(cron) & ~dg.AutomationCondition.any_deps_missing() & ~dg.AutomationCondition.in_progress()
        if cron else eager_or_new_code()
    )
    unsettled = dg.AutomationCondition.missing() | dg.AutomationCondition.in_progress() | dg.AutomationCondition.execution_failed()
    shards_pending = None
    for key in shard_assets:
        pending = dg.AutomationCondition.asset_matches(key, unsettled).with_label(f"{key.to_user_string()}: a shard missing, running or failed")
        shards_pending = pending if shards_pending is None else shards_pending | pending
    failed_input = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.execution_failed() & ~dg.AutomationCondition.will_be_requested()
    ).with_label("an input's latest run failed")
    condition = trigger & ~failed_input
    if shards_pending is not None:
        condition = condition & ~shards_pending
    return condition.with_label(f"{GLOBAL_LABEL} ({'on_cron ' + cron if cron else 'eager'})")


automation_sensor = dg.AutomationConditionSensorDefinition(
    "curation_automation",
    target=dg.AssetSelection.all(),
    # CURATION_AUTOMATION=off: only the landing sensor runs (ingest-only deployments, load tests).
    default_status=dg.DefaultSensorStatus.STOPPED if os.environ.get("CURATION_AUTOMATION") == "off" else dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get("CURATION_AUTOMATION_INTERVAL", "30")),
    description="Runs per-shard assets for new shards and refreshes the global assets (declarative automation).",
)
