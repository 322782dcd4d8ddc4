"""The Dagster definitions: assets, checks, sensors and resources of the curation graph, built from
the project config (curation_assets/project.py) so that the UI, the automation and `curate` share
one data home, one set of models and one set of asset settings."""

from __future__ import annotations

import os

import dagster as dg
import pydantic

from curation_assets import (
    gradient_store, instance_scores, knowledge_tree, normalized_tags, open_tags, query_set, selected_subset, subset_training, warmup_adapter,
)
from curation_assets.recovery import dead_run_sensor
from curation_assets import raw_pool as raw_pool_module
from curation_assets.automation import GLOBAL_LABEL, automation_sensor, global_condition
from curation_assets.partitions import pool_shards
from curation_assets.project import ProjectConfig, with_config_defaults
from resources.models import EmbedderResource
from resources.scorer import CausalLMScorerResource, DeitaScorersResource
from resources.storage import AtomicParquetIOManager, CurationStorage
from resources.tagger import TaggerResource
from resources.target_model import TargetModelResource


def build_resources(home: str | None = None, resource_config: dict | None = None) -> dict:
    """Resources for a project rooted at `home` (default `$CURATION_HOME` or ./.curation).

    `resource_config` maps a resource key to keyword arguments, e.g. {"landing": {"min_age_seconds": 0}}.
    """
    cfg = {key: dict(value or {}) for key, value in (resource_config or {}).items()}
    unknown = set(cfg) - set(RESOURCE_TYPES)
    if unknown:
        raise ValueError(f"unknown resources {sorted(unknown)}; known: {sorted(RESOURCE_TYPES)}")
    if home:
        cfg.setdefault("storage", {})["home"] = home
    resources = {key: cls(**cfg.get(key, {})) for key, cls in RESOURCE_TYPES.items()}
    resources["io_manager"] = AtomicParquetIOManager(base_dir=str(resources["storage"].assets))
    return resources


RESOURCE_TYPES = {
    "storage": CurationStorage,
    "landing": raw_pool_module.LandingSensorConfig,
    "embedder": EmbedderResource,
    "tagger": TaggerResource,
    "tree_namer": knowledge_tree.TreeNamerResource,
    "scorer": CausalLMScorerResource,
    "deita_scorers": DeitaScorersResource,
    "judge": instance_scores.JudgeResource,
    "target_model": TargetModelResource,
}


def build_assets(asset_config: dict | None = None, resource_config: dict | None = None, source: str = "asset config") -> list:
    """The assets, with the score methods and strategies registered now (methods/registry.py);
    `asset_config` (run config per asset) sets the code versions of the plugin-driven assets, so
    a changed setting or method VERSION shows their materializations as stale."""
    asset_config = asset_config or {}

    def built(name: str, build):
        try:
            return build()
        except pydantic.ValidationError as exc:  # a setting of the wrong type, an unknown method or strategy
            problems = "; ".join(f"assets.{'.'.join(str(p) for p in (name, *e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors())
            raise ValueError(f"{source}: {problems}") from exc
        except ValueError as exc:
            raise ValueError(f"{source}: assets.{name}: {exc}") from exc

    return [
        raw_pool_module.raw_pool,
        open_tags.open_tags,
        normalized_tags.normalized_tags,
        knowledge_tree.knowledge_tree,
        built("instance_scores", lambda: instance_scores.build_asset(asset_config.get("instance_scores"), resource_config)),
        instance_scores.comparative_scores,
        query_set.query_set,
        warmup_adapter.warmup_adapter,
        gradient_store.gradient_store,
        built("selected_subset", lambda: selected_subset.build_asset(asset_config.get("selected_subset"))),
        selected_subset.subset_export,
        selected_subset.selection_report,
        subset_training.subset_model,
        subset_training.subset_evaluation,
    ]


CHECKS = [raw_pool_module.raw_pool_reconciles, selected_subset.selected_subset_checks]
SENSORS = [raw_pool_module.landing_sensor, automation_sensor, dead_run_sensor]

# Asset groups in the order of the README's stages, so the lineage reads left to right.
STAGES = {
    "1_raw_pool": ["raw_pool", "raw_pool_quarantine"],
    "2_open_tags": ["open_tags"],
    "3_normalized_tags": ["normalized_tags", "tag_vocabulary"],
    "4_knowledge_tree": ["knowledge_tree", "tree_memberships"],
    "5_instance_scores": ["instance_scores", "comparative_scores"],
    "6_gradient_store": ["query_set", "warmup_adapter", "gradient_store"],
    "7_selected_subset": ["selected_subset", "selection_reasons", "subset_export", "selection_report"],
    "8_evaluation": ["subset_model", "subset_evaluation"],
}
STAGE_OF = {asset: group for group, assets in STAGES.items() for asset in assets}

def executor_from_env() -> dg.ExecutorDefinition | None:
    """`CURATION_EXECUTOR=celery`: steps run on dagster-celery workers (broker and result backend
    from `CURATION_CELERY_BROKER` / `CURATION_CELERY_BACKEND`, see deploy/); else Dagster's
    multiprocess executor on this machine."""
    name = os.environ.get("CURATION_EXECUTOR", "multiprocess")
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {"broker": {"env": "CURATION_CELERY_BROKER"}, "backend": {"env": "CURATION_CELERY_BACKEND"}}, name="celery"
        )
    if name != "multiprocess":
        raise ValueError(f"CURATION_EXECUTOR={name!r}: expected multiprocess or celery")
    return None


SHARD_JOB, GLOBAL_JOB = "shard_assets", "global_assets"

# Assets that only some configs read (targeted selection): materialized on demand, never awaited.
OPTIONAL_ASSETS = ("query_set", "warmup_adapter", "gradient_store")


def automate(assets: list) -> list:
    """Stage groups on every asset, and the global refresh rule (automation.global_condition) on
    every global asset marked with `global_refresh()`, over the graph's per-shard assets."""
    optional = {dg.AssetKey(name) for name in OPTIONAL_ASSETS}
    shard_keys = [
        key for a in assets if isinstance(a, dg.AssetsDefinition) and a.partitions_def == pool_shards for key in a.keys if key not in optional
    ]
    # Targeted selection's inputs neither trigger nor hold back the refresh of the other assets.
    condition = global_condition(shard_keys).ignore(dg.AssetSelection.assets(*optional))

    def spec(s: dg.AssetSpec) -> dg.AssetSpec:
        changes = {}
        if s.key.to_user_string() in STAGE_OF:
            changes["group_name"] = STAGE_OF[s.key.to_user_string()]
        if s.automation_condition is not None and s.automation_condition.get_label() == GLOBAL_LABEL:
            changes["automation_condition"] = condition
        return s.replace_attributes(**changes) if changes else s

    return list(dg.map_asset_specs(spec, assets))


def build_definitions(home: str | None = None, resource_config: dict | None = None, asset_config: dict | None = None, *, source: str = "asset config") -> dg.Definitions:
    """The definitions for one data home, resource settings and per-op asset settings (the
    defaults every run uses unless a run config says otherwise)."""
    asset_config = dict(asset_config or {})
    if isinstance(asset_config.get("selected_subset"), dict):  # the earlier flat form still reads
        try:
            asset_config["selected_subset"] = selected_subset.nested_config(asset_config["selected_subset"])
        except ValueError as exc:
            raise ValueError(f"{source}: assets.{exc}" if str(exc).startswith("selected_subset") else f"{source}: assets.selected_subset: {exc}") from exc
    assets = automate(with_config_defaults(build_assets(asset_config, resource_config, source), asset_config, source))
    shard_keys = [k for a in assets if isinstance(a, dg.AssetsDefinition) and a.partitions_def == pool_shards for k in a.keys]
    return dg.Definitions(
        assets=assets,
        # One job per partitioning (Dagster's implicit job cannot be rebuilt by name in a worker):
        # what `curate run` submits to the celery workers, and a way to run either half in the UI.
        jobs=[
            dg.define_asset_job(SHARD_JOB, selection=dg.AssetSelection.assets(*shard_keys), partitions_def=pool_shards),
            dg.define_asset_job(GLOBAL_JOB, selection=dg.AssetSelection.all() - dg.AssetSelection.assets(*shard_keys)),
        ],
        asset_checks=CHECKS,
        sensors=SENSORS,
        resources=build_resources(home, resource_config),
        executor=executor_from_env(),
    )


def project_definitions(config: ProjectConfig | None = None) -> dg.Definitions:
    """The definitions of a project config (default: the one `ProjectConfig.load(None)` finds)."""
    config = config if config is not None else ProjectConfig.load(None)
    return build_definitions(config.home, config.resource_settings(), config.assets, source=str(config.path or "asset config"))


defs = project_definitions()


def cluster_job(name: str, config_path: str | None = None, home: str | None = None, resources: dict | None = None, assets: dict | None = None) -> dg.JobDefinition:
    """`shard_assets` or `global_assets` of the project config a run was started with, rebuilt in
    whichever process asks (the run's process, the celery workers, through
    `dg.build_reconstructable_job`), so `curate run --config/--home` runs the same definitions
    everywhere, whatever `$CURATION_CONFIG` a worker was started with. The run names the config
    file (read again on the worker, so keys written in it are not stored with the run); settings
    without a file come inline."""
    project = ProjectConfig.load(config_path) if config_path else ProjectConfig(resources=resources or {}, assets=assets or {})
    if home:
        project.home = home
    return project_definitions(project).resolve_job_def(name)
