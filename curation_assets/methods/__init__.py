"""Pure method code: no Dagster imports. Each module holds the math of one stage or method."""
