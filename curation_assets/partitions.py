"""One dynamic partition per landed file version (see `landing.py`)."""

import dagster as dg

pool_shards = dg.DynamicPartitionsDefinition(name="pool_shards")
