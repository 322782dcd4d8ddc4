"""Dagster run config from the methods' pure settings models: each settings model becomes a
`dg.Config` class with the same typed fields, so Dagster validates run config (a typo in a key or
a value outside a Literal is a config error in the launchpad, before any run starts)."""

from __future__ import annotations

from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel, create_model


def config_class(settings: type[BaseModel], name: str, **extra: Any) -> type[dg.Config]:
    """A dg.Config subclass with the fields of `settings` (plus `extra`: name -> (type, default or FieldInfo))."""
    fields = {k: (f.annotation, f) for k, f in settings.model_fields.items()}
    return create_model(name, __base__=dg.Config, __doc__=settings.__doc__, **extra, **fields)


def strategy_config_class(strategy) -> type[dg.Config]:
    """A strategy's settings as a member of selected_subset's union, discriminated by `strategy`."""
    camel = "".join(p.capitalize() for p in strategy.name.split("_"))
    cls = config_class(strategy.settings, f"{camel}Strategy", strategy=(Literal[strategy.name], strategy.name))
    cls.__doc__ = strategy.description
    return cls


def merged_fields(models: dict[str, type[BaseModel]]) -> dict[str, tuple]:
    """The union of several settings models' fields; one name declared twice must agree."""
    fields: dict[str, tuple] = {}
    owners: dict[str, str] = {}
    for owner, model in models.items():
        for key, f in model.model_fields.items():
            if key in fields:
                a, b = fields[key][1], f
                if (a.annotation, a.default) != (b.annotation, b.default):
                    raise ValueError(f"setting {key!r} of {owner!r} differs from the one of {owners[key]!r} (type or default)")
                continue
            fields[key], owners[key] = (f.annotation, f), owner
    return fields
