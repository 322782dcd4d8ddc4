"""query_set: the target-task examples targeted selection works from (one row per query, with its task)."""

import tempfile
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.methods import query_sets
from curation_assets.methods.ingest import IngestOptions, ingest_file, load_options
from curation_assets.methods.lora_training import conversation_of

SCHEMA = {"query_id": pl.Int64, "task": pl.String, "prompt": pl.String, "answer": pl.String, "source": pl.String}
COLUMNS = {
    "query_id": "Query number, 0-based, stable for the same config.",
    "task": "The target task the query stands for.",
    "prompt": "The query's prompt (the dev example's question, in its few-shot format).",
    "answer": "Its reference answer (the part LESS takes gradients on).",
    "source": "File it was read from.",
}


class QueryTask(dg.Config):
    source: str = Field(description=f"One of {list(query_sets.SOURCES)}.")
    path: str | None = Field(None, description="File or folder (bbh: cot-prompts/, mmlu: dev/); null = the sample shipped in curation_assets/query_sets.")
    name: str | None = Field(None, description="Task name; default: the builder's (bbh/<task>, mmlu/<subject>, gsm8k, ...) or the file's stem.")
    limit: int | None = Field(None, description="Keep the first N queries of this task.")


class QuerySetConfig(dg.Config):
    tasks: list[QueryTask] = Field(
        default=[{"source": "bbh"}, {"source": "gsm8k"}, {"source": "mmlu"}],
        description="The tasks, each from a public dev set or any file raw_pool reads. Default: the bundled BBH/GSM8K/MMLU sample.",
    )


BUNDLED_PATHS = {"bbh": "bbh", "gsm8k": "gsm8k_test_sample.jsonl", "mmlu": "mmlu"}


def _file_queries(path: Path, task: str) -> list[tuple[str, str, str]]:
    opts = load_options(str(path), IngestOptions())
    with tempfile.TemporaryDirectory() as tmp:
        summary = ingest_file(str(path), opts, partition="query", source_file=path.name, staging_dir=tmp)
        rows = pl.concat([pl.read_parquet(p) for p in summary.pool_parts]) if summary.pool_parts else None
    if rows is None or rows.is_empty():
        raise dg.Failure(f"query file {path} holds no readable conversation with a response")
    conversations = [conversation_of(m, s) for m, s in zip(rows["messages"].to_list(), rows["system_prompt"].to_list())]
    return query_sets.conversation_queries(task, conversations)


def build_query_rows(tasks: list[QueryTask]) -> pl.DataFrame:
    frames = []
    for t in tasks:
        if t.source not in query_sets.SOURCES:
            raise dg.Failure(f"query task source {t.source!r} is not one of {list(query_sets.SOURCES)}")
        if t.path is None and t.source not in BUNDLED_PATHS:
            raise dg.Failure(f"query task {t.source}: give its path (the bundled sample holds {sorted(BUNDLED_PATHS)})")
        path = Path(t.path).expanduser() if t.path else query_sets.BUNDLED / BUNDLED_PATHS[t.source]
        if not path.exists():
            raise dg.Failure(f"query task {t.source}: {path} does not exist")
        try:
            rows = _file_queries(path, t.name or path.stem) if t.source == "file" else query_sets.BUILDERS[t.source](path)
        except (ValueError, KeyError) as exc:
            raise dg.Failure(f"query task {t.source} ({path}): {exc}") from exc
        rows = rows[: t.limit] if t.limit is not None else rows
        frames.append(pl.DataFrame({"task": [t.name or task for task, _, _ in rows],
                                    "prompt": [r[1] for r in rows], "answer": [r[2] for r in rows], "source": [str(path)] * len(rows)},
                                   schema={k: v for k, v in SCHEMA.items() if k != "query_id"}))
    out = pl.concat(frames) if frames else pl.DataFrame(schema={k: v for k, v in SCHEMA.items() if k != "query_id"})
    if out.is_empty():
        raise dg.Failure("the query set is empty")
    return out.with_row_index("query_id").with_columns(pl.col("query_id").cast(pl.Int64)).select(list(SCHEMA))


@dg.asset(group_name="targeted", kinds={"parquet", "polars"}, metadata={"descriptions": COLUMNS},
          description="Target-task queries (prompt, answer, task) that targeted selection matches the pool against.")
def query_set(config: QuerySetConfig) -> dg.MaterializeResult:
    rows = build_query_rows(config.tasks)
    per_task = rows.group_by("task", maintain_order=True).len()
    return dg.MaterializeResult(value=rows, metadata={
        "dagster/row_count": rows.height,
        "tasks": per_task.height,
        "queries_per_task": ui.table(per_task),
        "preview": ui.table(rows.head(6).select("query_id", "task", "prompt", "answer"), 160),
        "config": dg.MetadataValue.json(config.model_dump()),
    })
