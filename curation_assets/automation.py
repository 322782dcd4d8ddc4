"""When assets refresh: per-shard assets as soon as their shard lands; global assets (normalization,
tree, comparative scores, selection) eagerly, or on a cron for big pools."""

import os

import dagster as dg
import polars as pl


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
    """`eager` (default): refresh when inputs or the code version change and no input is missing
    or running. `CURATION_REFRESH_CRON="0 3 * * *"`: at most once per cron tick, after the inputs changed."""
    cron = os.environ.get("CURATION_REFRESH_CRON")
    return dg.AutomationCondition.on_cron(cron) if cron else eager_or_new_code()


def global_table(description: str) -> dg.AssetOut:
    """An output of a global multi-asset: a Polars table in Parquet, refreshed by global_refresh."""
    return dg.AssetOut(description=description, dagster_type=pl.DataFrame, kinds={"parquet", "polars"}, automation_condition=global_refresh())


def shard_refresh() -> dg.AutomationCondition:
    return eager_or_new_code()


automation_sensor = dg.AutomationConditionSensorDefinition(
    "curation_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get("CURATION_AUTOMATION_INTERVAL", "30")),
    description="Runs per-shard assets for new shards and refreshes the global assets (declarative automation).",
)
