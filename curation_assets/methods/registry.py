"""The registry of score methods (instance_scores) and selection strategies (selected_subset).

The assets loop over SCORE_METHODS and STRATEGIES: their run config, cache keys, Dagster code
versions, UI histograms, the reasons table and `curate why` all follow from these objects.

How to add a score method or a strategy: one file plus one registry line.

1. Write `curation_assets/methods/<paper>.py` (pure: no dagster, no resources imports) holding
   - `VERSION = "1"`: bump it whenever what the code computes changes; cached rows of the old
     version are then recomputed and Dagster shows the affected partitions as stale.
   - a settings model, a subclass of `plugin.Settings` (pydantic, typed fields with defaults and
     `Field(description=...)`). Score-method settings are flat keys of instance_scores' config
     (prefix them with the method's name unless shared on purpose, like `max_length`; a name
     two methods declare must have the same type and default); strategy settings are the keys
     under `strategy: {<name>: {...}}` of selected_subset's config.
   - a score method, `plugin.ScoreMethod(name, description, settings, version, columns, compute,
     offers=..., model="scorer" | "deita_scorers" | None, histograms=..., notes=..., heavy=...)`,
     where `compute(rows, settings, model) -> pl.DataFrame` returns row_id plus `columns`, and/or
   - a strategy, `plugin.Strategy(name, description, settings, version, pick, fills=...,
     reports=..., reads=...)`, where `pick(candidates, budget, settings) -> plugin.Picked`; raise
     ValueError for a clear run failure (a missing input).
2. Add the object to SCORE_METHODS or STRATEGIES below.

`register_score_method` / `register_strategy` add one at run time (a plugin package, a test); they
must run before `curation_assets.definitions.build_definitions()` builds the assets.
"""

from __future__ import annotations

from curation_assets.methods import cherry, deita, generic, instag, iterit, superfiltering, tacos, tags, targeted, tshirt
from curation_assets.methods.plugin import ScoreMethod, Strategy

SCORE_METHODS: dict[str, ScoreMethod] = {m.name: m for m in (
    superfiltering.IFD,
    tshirt.TSHIRT_SCORE,
    cherry.CHERRY_SCORE,
    iterit.ITERIT_SCORE,
    deita.DEITA_SCORE,
)}

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    tags.TAGS,
    tacos.TACOS,
    instag.INSTAG,
    tshirt.TSHIRT,
    deita.DEITA,
    iterit.ITERIT,
    superfiltering.SUPERFILTERING,
    cherry.CHERRY,
    generic.TOP_K,
    generic.RANDOM,
    *targeted.TARGETED_STRATEGIES,
)}


def register_score_method(method: ScoreMethod) -> ScoreMethod:
    if method.name in SCORE_METHODS and SCORE_METHODS[method.name] is not method:
        raise ValueError(f"a score method named {method.name!r} is already registered")
    clash = {c for m in SCORE_METHODS.values() if m.name != method.name for c in m.columns} & set(method.columns)
    if clash:
        raise ValueError(f"score method {method.name!r}: columns {sorted(clash)} belong to another method")
    SCORE_METHODS[method.name] = method
    return method


def register_strategy(strategy: Strategy) -> Strategy:
    if strategy.name in STRATEGIES and STRATEGIES[strategy.name] is not strategy:
        raise ValueError(f"a strategy named {strategy.name!r} is already registered")
    STRATEGIES[strategy.name] = strategy
    return strategy


def offered_scores() -> list[str]:
    """Score columns selection can rank by, in registry order (shown with percentiles in the reasons)."""
    return [c for m in SCORE_METHODS.values() for c in m.offers]
