"""The row caches: compaction to one part per run, indexed lookups, quarantine of unreadable parts."""

import polars as pl

from curation_assets.rowwise import compute_missing
from resources.row_cache import INDEX, RowCache


def frame(ids, value=1.0):
    return pl.DataFrame({"row_id": [str(i) for i in ids], "value": [float(value)] * len(ids)})


def squares(chunk: pl.DataFrame) -> pl.DataFrame:
    return chunk.select("row_id", (pl.col("row_id").cast(pl.Int64) ** 2).cast(pl.Float64).alias("value"))


def test_one_part_per_run_and_lookups_read_only_the_parts_they_need(tmp_path, monkeypatch):
    cache = RowCache(tmp_path / "c")
    first = pl.DataFrame({"row_id": [str(i) for i in range(100)]})
    result, stats = compute_missing(first, cache, squares, chunk_rows=7)
    assert stats.computed == 100 and result["value"].to_list() == [float(i * i) for i in range(100)]
    assert len(cache.parts()) == 1 and (tmp_path / "c" / INDEX).exists()  # 15 chunks compacted into one part
    second = pl.DataFrame({"row_id": [str(i) for i in range(90, 130)]})
    _, stats = compute_missing(second, cache, squares, chunk_rows=7)
    assert (stats.reused, stats.computed) == (10, 30) and len(cache.parts()) == 2

    read = []
    real = pl.read_parquet
    monkeypatch.setattr(pl, "read_parquet", lambda path, *a, **k: read.append(str(path)) or real(path, *a, **k))
    hits = cache.lookup(pl.Series(["120", "125"]))
    parts = [p for p in read if not p.endswith(INDEX)]
    assert sorted(hits["row_id"]) == ["120", "125"] and len(parts) == 1  # the index points at the one part


def test_an_interrupted_run_resumes_from_its_loose_chunks(tmp_path):
    cache = RowCache(tmp_path / "c")
    calls = []

    def failing(chunk):
        calls.append(chunk.height)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return squares(chunk)

    rows = pl.DataFrame({"row_id": [str(i) for i in range(50)]})
    try:
        compute_missing(rows, cache, failing, chunk_rows=10)
    except RuntimeError:
        pass
    assert len(cache.parts()) == 2  # the two finished chunks, not yet indexed
    result, stats = compute_missing(rows, cache, squares, chunk_rows=10)
    assert (stats.reused, stats.computed) == (20, 30) and result["value"].to_list() == [float(i * i) for i in range(50)]
    assert len(cache.parts()) == 1


def test_a_truncated_part_is_quarantined_and_its_rows_recomputed(tmp_path):
    warnings = []
    cache = RowCache(tmp_path / "c", warn=warnings.append)
    rows = pl.DataFrame({"row_id": [str(i) for i in range(30)]})
    compute_missing(rows, cache, squares, chunk_rows=30)
    part = cache.parts()[0]
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])  # a disk-full or killed write
    result, stats = compute_missing(rows, cache, squares, chunk_rows=30)
    assert stats.computed == 30 and result["value"].to_list() == [float(i * i) for i in range(30)]
    moved = list((tmp_path / "c" / "quarantine").iterdir())
    assert len(moved) == 1 and moved[0].read_bytes() == data[: len(data) // 2]
    assert len(warnings) == 1 and part.name in warnings[0] and str(moved[0]) in warnings[0]
    assert len(cache.parts()) == 1 and cache.lookup(rows["row_id"]).height == 30


def test_a_corrupt_index_is_set_aside_and_the_parts_still_answer(tmp_path):
    cache = RowCache(tmp_path / "c", warn=lambda m: None)
    compute_missing(pl.DataFrame({"row_id": ["a", "b"]}), cache, lambda c: c.with_columns(pl.lit(1.0).alias("value")), chunk_rows=1)
    (tmp_path / "c" / INDEX).write_bytes(b"not parquet")
    assert sorted(cache.lookup(pl.Series(["a", "b"]))["row_id"]) == ["a", "b"]
    assert len(cache.quarantined) == 1
