"""Reading table metadata (dg.MetadataValue.table) in tests: its header and rows as "| a | b |" lines."""


def table_text(value) -> str:
    header = "| " + " | ".join(c.name for c in value.schema.columns) + " |"
    return "\n".join([header] + ["| " + " | ".join(str(v) for v in record.data.values()) + " |" for record in value.records])


def undescribed_columns(instance) -> dict[str, list[str]]:
    """Per asset materialized in `instance`, the columns of its latest column schema (written by the
    IO manager from the asset's "descriptions") that have no description."""
    missing = {}
    for key in instance.get_asset_keys():
        event = instance.get_latest_materialization_event(key)
        schema = event.asset_materialization.metadata.get("dagster/column_schema") if event else None
        if schema is not None:
            bare = [c.name for c in schema.schema.columns if not c.description]
            if bare:
                missing[key.to_user_string()] = bare
    return missing
