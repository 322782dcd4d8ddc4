"""When assets refresh: per-shard assets as soon as their shard lands; global assets (normalization,
tree, comparative scores, selection) eagerly, or on a cron for big pools."""

import os

import dagster as dg
import polars as pl


def global_refresh() -> dg.AutomationCondition:
    """`eager` (default): refresh when inputs change and none is missing or running.
    `CURATION_REFRESH_CRON="0 3 * * *"`: at most once per cron tick, after the inputs changed."""
    cron = os.environ.get("CURATION_REFRESH_CRON")
    return dg.AutomationCondition.on_cron(cron) if cron else dg.AutomationCondition.eager()


def global_table(description: str) -> dg.AssetOut:
    """An output of a global multi-asset: a Polars table in Parquet, refreshed by global_refresh."""
    return dg.AssetOut(description=description, dagster_type=pl.DataFrame, kinds={"parquet", "polars"}, automation_condition=global_refresh())


def shard_refresh() -> dg.AutomationCondition:
    return dg.AutomationCondition.eager()


automation_sensor = dg.AutomationConditionSensorDefinition(
    "curation_automation",
    target=dg.AssetSelection.all(),
    # CURATION_AUTOMATION=off: only the landing sensor runs (ingest-only deployments, load tests).
    default_status=dg.DefaultSensorStatus.STOPPED if os.environ.get("CURATION_AUTOMATION") == "off" else dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get("CURATION_AUTOMATION_INTERVAL", "30")),
    description="Runs per-shard assets for new shards and refreshes the global assets (declarative automation).",
)
