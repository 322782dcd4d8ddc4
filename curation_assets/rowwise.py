"""Per-row work that is computed once per (row_id, method version) and resumes after interruption."""

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from resources.storage import RowCache


@dataclass
class RowwiseStats:
    rows: int
    reused: int
    computed: int

    def metadata(self) -> dict:
        return {"rows": self.rows, "reused_from_cache": self.reused, "computed_now": self.computed}


def progress(done: int, total: int, elapsed_s: float) -> str:
    """A run-log line for long steps: rows done, rate and the time left at that rate."""
    rate = done / elapsed_s if elapsed_s > 0 else float("inf")
    left = (total - done) / rate if rate and rate != float("inf") else 0.0
    return f"computed {done}/{total} rows ({rate:,.1f} rows/s, {left:,.0f} s left)"


def compute_missing(
    rows: pl.DataFrame,
    cache: RowCache,
    compute: Callable[[pl.DataFrame], pl.DataFrame],
    *,
    chunk_rows: int,
    keep: Callable[[pl.DataFrame], pl.Series] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[pl.DataFrame, RowwiseStats]:
    """Results for every row of `rows` (which must hold `row_id`), in the order of `rows`.

    Rows already in `cache` are reused; the others go to `compute` in chunks of `chunk_rows`, and
    each chunk's results are cached as soon as it finishes. `keep` picks the results worth caching
    (e.g. not the failed ones, so that a later run retries them); all results are returned.
    When all chunks are done, their parts are compacted into one. A cached part that cannot be
    read is quarantined by the cache (and named in a warning through its `warn`): its rows are
    computed again.
    """
    cached = cache.lookup(rows["row_id"])
    todo = rows if cached is None else rows.join(cached.select("row_id"), on="row_id", how="anti")
    parts = [] if cached is None else [cached]
    began = time.monotonic()
    for start in range(0, todo.height, chunk_rows):
        result = compute(todo.slice(start, chunk_rows))
        cache.append(result.filter(keep(result)) if keep is not None else result)
        parts.append(result)
        log(progress(min(start + chunk_rows, todo.height), todo.height, time.monotonic() - began))
    if todo.height or cache.loose:
        cache.compact()
    reused = rows.height - todo.height
    if not parts:  # nothing to do: an empty result with the right columns
        parts = [compute(rows.head(0))]
    results = pl.concat(parts, how="diagonal_relaxed")
    ordered = rows.select("row_id").join(results, on="row_id", how="left", maintain_order="left")
    return ordered, RowwiseStats(rows.height, reused, todo.height)


def cached_encode(texts: list[str], encode: Callable[[list[str]], np.ndarray], cache: RowCache) -> np.ndarray:
    """Embeddings of `texts`, reusing those computed in earlier runs (keyed by a hash of the text)."""
    keys = pl.Series("row_id", [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts])
    frame = pl.DataFrame({"row_id": keys, "text": texts}).unique("row_id", keep="first", maintain_order=True)

    def embed(chunk: pl.DataFrame) -> pl.DataFrame:
        vectors = encode(chunk["text"].to_list())
        return pl.DataFrame({"row_id": chunk["row_id"], "vector": pl.Series(vectors, dtype=pl.Array(pl.Float32, vectors.shape[1]))})

    if frame.is_empty():
        return np.zeros((0, 0), dtype=np.float32)
    vectors, _ = compute_missing(frame, cache, embed, chunk_rows=50_000)
    ordered = keys.to_frame().join(vectors, on="row_id", how="left", maintain_order="left")
    return ordered["vector"].to_numpy().astype(np.float32, copy=False)
