"""The Dagster definitions: assets, checks, sensors and resources of the curation graph."""

from __future__ import annotations

import dagster as dg
from dagster_polars import PolarsParquetIOManager

from curation_assets import instance_scores, knowledge_tree, normalized_tags, open_tags, selected_subset, subset_training
from curation_assets.automation import automation_sensor
from curation_assets import raw_pool as raw_pool_module
from resources.models import EmbedderResource
from resources.scorer import CausalLMScorerResource, DeitaScorersResource
from resources.storage import CurationStorage
from resources.tagger import TaggerResource


def build_resources(home: str | None = None, resource_config: dict | None = None) -> dict:
    """Resources for a project rooted at `home` (default `$CURATION_HOME` or ./.curation).

    `resource_config` maps a resource key to keyword arguments, e.g. {"landing": {"min_age_seconds": 0}}.
    """
    cfg = {key: dict(value or {}) for key, value in (resource_config or {}).items()}
    unknown = set(cfg) - set(RESOURCE_TYPES)
    if unknown:
        raise ValueError(f"unknown resources {sorted(unknown)}; known: {sorted(RESOURCE_TYPES)}")
    if home:
        cfg.setdefault("storage", {}).setdefault("home", home)
    resources = {key: cls(**cfg.get(key, {})) for key, cls in RESOURCE_TYPES.items()}
    resources["io_manager"] = PolarsParquetIOManager(base_dir=str(resources["storage"].assets))
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
}
ASSETS = [
    raw_pool_module.raw_pool,
    open_tags.open_tags,
    normalized_tags.normalized_tags,
    knowledge_tree.knowledge_tree,
    instance_scores.instance_scores,
    instance_scores.comparative_scores,
    selected_subset.selected_subset,
    selected_subset.subset_export,
    subset_training.subset_model,
    subset_training.subset_evaluation,
]
CHECKS = [raw_pool_module.raw_pool_reconciles, selected_subset.selected_subset_checks]
SENSORS = [raw_pool_module.landing_sensor, automation_sensor]


def build_definitions(home: str | None = None, resource_config: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        sensors=SENSORS,
        resources=build_resources(home, resource_config),
    )


defs = build_definitions()
