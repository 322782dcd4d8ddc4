"""Reading table metadata (dg.MetadataValue.table) in tests: its header and rows as "| a | b |" lines."""


def table_text(value) -> str:
    header = "| " + " | ".join(c.name for c in value.schema.columns) + " |"
    return "\n".join([header] + ["| " + " | ".join(str(v) for v in record.data.values()) + " |" for record in value.records])
