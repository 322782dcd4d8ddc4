"""The project config: one YAML file that every entry point reads.

`curate run/why/export/report` and the definitions that `dagster dev` loads all find the same file,
so the UI's launchpad defaults are the headless run's settings and every path resolves to the same
data. Which file: `--config FILE`, else `$CURATION_CONFIG`, else `curation.yaml` in the working
folder; without one, code defaults and `$CURATION_HOME` (or ./.curation).

    home: .curation            # data home, relative to this file
    resources:                 # keyword arguments per resource (tagger, scorer, storage, ...)
      judge:
        base_url: {env: JUDGE_URL}   # read from the environment at run time (dg.EnvVar), never stored
    assets:                    # run config per asset op: becomes the op's config defaults
      selected_subset: {budget: 0.1}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml

CONFIG_ENV = "CURATION_CONFIG"
CONFIG_FILE = "curation.yaml"

# Settings that name files: relative values resolve against the config file's folder.
PATH_KEYS = {
    "resources": ("model", "complexity_model", "quality_model", "home", "landing_dir"),
    "assets": ("target_file", "iterit_chat_template", "base_model", "data_dir", "exclude_prompts_file"),
}
ALWAYS_PATHS = {"home", "landing_dir"}  # resolved even when the folder does not exist yet


def config_path(explicit: str | Path | None = None) -> Path | None:
    """The project config file in effect, or None (code defaults)."""
    if explicit:
        path = Path(explicit)
    elif os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    else:
        path = Path.cwd() / CONFIG_FILE
        return path.resolve() if path.is_file() else None
    if not path.is_file():
        raise FileNotFoundError(f"project config {path} does not exist" + ("" if explicit else f" (named by ${CONFIG_ENV})"))
    return path.resolve()


@dataclass
class ProjectConfig:
    """`home`, `resources` and per-asset `assets` run config, read from YAML."""

    home: str | None = None
    resources: dict = field(default_factory=dict)
    assets: dict = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path | None) -> "ProjectConfig":
        """The config in `path`; None: the file discovery above (`$CURATION_CONFIG`, ./curation.yaml)."""
        found = config_path(path)
        if found is None:
            return cls()
        data = yaml.safe_load(found.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{found}: expected a mapping with home, resources, assets")
        unknown = set(data) - {"home", "resources", "assets"}
        if unknown:
            raise ValueError(f"{found}: unknown sections {sorted(unknown)}; expected home, resources, assets")
        here = found.parent
        for section in ("resources", "assets"):
            if not isinstance(data.get(section) or {}, dict):
                raise ValueError(f"{found}: `{section}` must map names to settings")
            for name, settings in (data.get(section) or {}).items():
                if settings is not None and not isinstance(settings, dict):
                    raise ValueError(f"{found}: {section}.{name} must be a mapping of settings")
                _resolve_paths(settings or {}, PATH_KEYS[section], here)
        home = data.get("home")
        if home is not None:
            home = str((here / Path(str(home)).expanduser()).resolve())
        return cls(home=home, resources=data.get("resources") or {}, assets=data.get("assets") or {}, path=found)

    def resource_settings(self) -> dict[str, dict]:
        """Per resource, keyword arguments with `{env: NAME}` turned into `dg.EnvVar(NAME)`."""
        return {key: {k: _env(v) for k, v in (settings or {}).items()} for key, settings in self.resources.items()}


def _resolve_paths(settings: dict, keys: tuple[str, ...], here: Path) -> None:
    """Resolve the path settings in `settings` against `here`, nested ones too (a strategy's
    settings sit under `strategy: {name: {...}}`)."""
    for key, value in settings.items():
        if isinstance(value, dict):
            _resolve_paths(value, keys, here)
        elif key in keys and isinstance(value, str) and not Path(value).expanduser().is_absolute():
            if key in ALWAYS_PATHS or (here / value).exists():
                settings[key] = str((here / value).resolve())


def _env(value):
    if isinstance(value, dict) and set(value) == {"env"}:
        return dg.EnvVar(str(value["env"]))
    return value


# --------------------------------------------------------------------------- op config defaults


def with_config_defaults(assets: list[dg.AssetsDefinition], settings: dict[str, dict], source: str = "project config") -> list[dg.AssetsDefinition]:
    """`assets` whose ops take `settings[op_name]` as their config defaults.

    A run with no config (the Materialize button, the automation sensor, a schedule) then uses the
    project's settings, and the launchpad's scaffold shows them; a run config given explicitly still
    overrides them field by field.
    """
    by_op = {a.node_def.name: a for a in assets if isinstance(a, dg.AssetsDefinition)}
    unknown = set(settings) - set(by_op)
    if unknown:
        configurable = sorted(n for n, a in by_op.items() if a.node_def.config_schema.as_field().config_type.kind.name.endswith("SHAPE"))
        raise ValueError(f"{source}: assets {sorted(unknown)} are not asset ops; configurable: {configurable}")
    out = []
    for asset in assets:
        values = settings.get(asset.node_def.name) if isinstance(asset, dg.AssetsDefinition) else None
        out.append(_replace_config(asset, values, f"{source}: assets.{asset.node_def.name}") if values else asset)
    return out


def _replace_config(asset: dg.AssetsDefinition, values: dict, where: str) -> dg.AssetsDefinition:
    # Dagster has no public way to set an op's config defaults after the decorator ran, so this
    # rebuilds the definition with the op's schema replaced (README: "Still hand-written").
    op = asset.node_def
    schema = _with_defaults(op.config_schema.as_field(), values, where)
    new_op = op.with_replaced_properties(name=op.name, config_schema=schema)
    return dg.AssetsDefinition.dagster_internal_init(**{**asset.get_attributes_dict(), "node_def": new_op})


def _with_defaults(fld, value, where: str):
    """`fld` (a Dagster config field) with `value` as its default; shapes recurse so that a
    partial run config still takes the project's value for the fields it leaves out."""
    from dagster._config import validate_config  # the one config check that takes a type, not a job

    if isinstance(value, dict) and isinstance(fld.config_type, dg.Shape):
        fields = dict(fld.config_type.fields)
        unknown = set(value) - set(fields)
        if unknown:
            raise ValueError(f"{where}: unknown settings {sorted(unknown)}; known: {sorted(fields)}")
        sub = {k: _with_defaults(f, value[k], f"{where}.{k}") if k in value else f for k, f in fields.items()}
        # Each field's own default (the project's value, else the code's): a one-of field such as
        # selected_subset's `strategy` is replaced whole, never merged with the code default.
        default = {k: f.default_value for k, f in sub.items() if f.default_provided}
        shape = dg.Shape(sub, field_aliases=getattr(fld.config_type, "field_aliases", None))
        return dg.Field(shape, default_value=default, is_required=False, description=fld.description)
    result = validate_config(fld.config_type, value)
    if not result.success:
        raise ValueError(f"{where}: {'; '.join(e.message for e in result.errors)}")
    return dg.Field(fld.config_type, default_value=value, is_required=False, description=fld.description)

