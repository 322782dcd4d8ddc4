"""Per-row results of one stage under one version, kept as a few Parquet files with an index.

`<cache>/<stage>/<version>/`:
  *.parquet         result parts: chunks appended while a run computes (so an interrupted run
                    resumes), compacted into one part when the run finishes
  index.parquet     row_id -> part, so that a lookup reads only the parts holding its rows
  quarantine/       parts that could not be read (truncated, corrupt): moved aside, never trusted
  .lock             serializes compactions and index updates between processes

Parts are the truth and the index an accelerator: a part the index does not list (the chunks of
a run still going, or of one that died) is read in full, and indexed by the next compaction.
Keyed by `row_id`, so a row seen in any earlier shard or run is never computed twice; a new
version (a method's VERSION, settings or model) is a new folder, so exactly the affected results
are recomputed.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

INDEX = "index.parquet"


class RowCache:
    def __init__(self, root: Path, warn: Callable[[str], None] | None = None):
        self.root = root
        self.warn = warn or (lambda message: None)
        self.quarantined: list[Path] = []  # where this object moved unreadable parts
        self.loose = False  # the last lookup read parts the index does not list (compact them)

    # ------------------------------------------------------------------ reading

    def parts(self) -> list[Path]:
        return sorted(p for p in self.root.glob("*.parquet") if p.name != INDEX) if self.root.is_dir() else []

    def _index(self) -> pl.DataFrame:
        path = self.root / INDEX
        if path.exists():
            try:
                return pl.read_parquet(path, columns=["row_id", "part"])
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001  (unreadable: every part then counts as unindexed)
                self._quarantine(path, exc)
        return pl.DataFrame(schema={"row_id": pl.String, "part": pl.String})

    def lookup(self, row_ids: pl.Series) -> pl.DataFrame | None:
        """Cached rows for `row_ids` (one per row_id), or None when nothing is cached yet."""
        wanted = row_ids.unique().implode()
        for _ in range(5):  # a part compacted away by another process meanwhile: look again
            names = {p.name for p in self.parts()}
            if not names:
                return None
            index = self._index().filter(pl.col("part").is_in(list(names)))
            hit_parts = set(index.filter(pl.col("row_id").is_in(wanted))["part"].unique())
            unindexed = names - set(index["part"].unique())
            self.loose = bool(unindexed)
            try:
                frames = [f for f in (self._read(self.root / n) for n in sorted(hit_parts | unindexed)) if f is not None]
            except FileNotFoundError:
                continue
            if not frames:
                return None
            # A filter, not a semi join: polars 1.44 panics on semi joins that return no rows when
            # a column is a fixed-size array (cached embeddings).
            hits = pl.concat([f.filter(pl.col("row_id").is_in(wanted)) for f in frames], how="diagonal_relaxed")
            return hits.unique("row_id", keep="first", maintain_order=True) if hits.height else hits
        raise RuntimeError(f"row cache {self.root}: parts kept vanishing during lookups")

    def _read(self, path: Path) -> pl.DataFrame | None:
        """A part's rows; None (and the part quarantined) when it cannot be read."""
        try:
            frame = pl.read_parquet(path)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001  (truncated or corrupt, whatever the reader raises)
            self._quarantine(path, exc)
            return None
        if "row_id" not in frame.columns:
            self._quarantine(path, ValueError("no row_id column"))
            return None
        return frame

    def _quarantine(self, path: Path, exc: Exception) -> None:
        target = self.root / "quarantine" / f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return
        self.quarantined.append(target)
        self.warn(f"row cache: {path} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); moved to {target}; its rows will be recomputed")

    # ------------------------------------------------------------------ writing

    def append(self, rows: pl.DataFrame) -> Path | None:
        """Store `rows` as a new part, written atomically; the part's path."""
        if rows.is_empty():
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.parquet"
        tmp = self.root / f".{name}.tmp"
        rows.write_parquet(tmp, compression="zstd")
        os.replace(tmp, self.root / name)
        return self.root / name

    def compact(self) -> Path | None:
        """Merge the parts the index does not list yet (one run's chunks, or those of runs that
        died) into one indexed part: one file per run, however many chunks it took."""
        if not self.root.is_dir():
            return None
        with self._locked():
            index = self._index()
            names = {p.name for p in self.parts()}
            loose = sorted(names - set(index["part"].unique()))
            if not loose:
                return None
            frames = [f for f in (self._read(self.root / n) for n in loose) if f is not None]
            merged_path = None
            if frames:
                merged = pl.concat(frames, how="diagonal_relaxed").unique("row_id", keep="first", maintain_order=True).sort("row_id")
                merged_path = self.append(merged) if len(loose) > 1 else self.root / loose[0]
                index = pl.concat([index, merged.select(pl.col("row_id").cast(pl.String), pl.lit(merged_path.name).alias("part"))])
            live = ({merged_path.name} if merged_path else set()) | (names - set(loose))
            index = index.filter(pl.col("part").is_in(list(live)))
            tmp = self.root / f".{INDEX}.{uuid.uuid4().hex[:8]}.tmp"
            index.write_parquet(tmp)
            os.replace(tmp, self.root / INDEX)
            if len(loose) > 1:
                for n in loose:
                    (self.root / n).unlink(missing_ok=True)
            return merged_path

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
