"""Where the project keeps its files: landing directory, landed archive, asset tables, caches."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_polars import PolarsParquetIOManager
from pydantic import Field

from resources.row_cache import RowCache
from curation_assets.methods.fileio import temporary_name


class CorruptIntermediateError(RuntimeError):
    """A stored asset file that cannot be read (truncated, or not Parquet): names it and its repair."""

    def __init__(self, path: Path, cause: BaseException | str):
        path = Path(path)
        # <home>/assets/<asset>.parquet or <home>/assets/<asset>/<partition>.parquet
        home, what = (path.parents[2], f"{path.parent.name} partition {path.stem}") if path.parent.parent.name == "assets" else (path.parents[1], path.stem)
        super().__init__(
            f"{path} is unreadable ({cause}): the stored {what} is truncated or corrupt. "
            f"Repair it with `curate run --home {home}` (it re-materializes every shard whose outputs are "
            f"missing or unreadable, then the global assets), or re-materialize {what} in the UI."
        )
        self.path = path


def check_parquet(path: str | Path) -> None:
    """Raise CorruptIntermediateError unless `path` ends in a readable Parquet footer.

    Reads the footer only (a few KB): what a truncated or half-written file lacks."""
    try:
        pq.read_metadata(str(path))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise CorruptIntermediateError(Path(path), exc) from exc


def readable_parquet(path: str | Path) -> bool:
    try:
        check_parquet(path)
    except CorruptIntermediateError:
        return False
    return True


class AtomicParquetIOManager(PolarsParquetIOManager):
    """dagster-polars' Parquet IO manager (zstd, lazy or eager by annotation), made safe for
    concurrent runs: each file is written under a hidden temporary name and renamed into place, so
    a reader (another partition's run, a global step) sees the old file or the new one, never a
    part; and each file's footer is checked before it is read, so a truncated file fails with its
    path and the command that repairs it."""

    def dump_to_path(self, context: dg.OutputContext, obj, path) -> None:
        tmp = temporary_name(Path(str(path)))
        try:
            super().dump_to_path(context, obj, path.with_name(tmp.name))
            if tmp.exists():  # nothing is written for a None output
                os.replace(tmp, str(path))
        finally:
            tmp.unlink(missing_ok=True)

    def get_metadata(self, context: dg.OutputContext, obj) -> dict:
        # dagster-polars adds a raw sample ("table") and df.describe() ("stats"): message JSON and
        # means of hashes are noise. Each asset shows its own readable preview instead.
        return {k: v for k, v in super().get_metadata(context, obj).items() if k not in ("table", "stats")}

    def load_from_path(self, context: dg.InputContext, path):
        if Path(str(path)).exists():
            check_parquet(str(path))
        return super().load_from_path(context, path)


def default_home() -> str:
    """`$CURATION_HOME`, else `.curation` in the working directory (git-ignored)."""
    return os.environ.get("CURATION_HOME", str(Path.cwd() / ".curation"))


class CurationStorage(dg.ConfigurableResource):
    """File layout under `home`:

    landing/   files dropped by users (or `landing_dir` when set)
    landed/    an immutable copy of each landed file version, one folder per partition
    assets/    asset tables written by the Polars Parquet IO manager
    cache/     per-row results keyed by row_id and method version
    exports/   exported subsets
    staging/   scratch space of running steps
    """

    home: str = Field(default_factory=default_home, description="Root folder for all project files.")
    landing_dir: str | None = Field(default=None, description="Folder watched for new pool files.")

    @property
    def root(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def landing(self) -> Path:
        return Path(self.landing_dir).expanduser().resolve() if self.landing_dir else self.root / "landing"

    @property
    def landed(self) -> Path:
        return self.root / "landed"

    @property
    def assets(self) -> Path:
        return self.root / "assets"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def asset_file(self, asset: str, partition: str | None = None) -> Path:
        """Path where the Polars Parquet IO manager keeps `asset` (one file per partition)."""
        return self.assets / asset / f"{partition}.parquet" if partition else self.assets / f"{asset}.parquet"

    def partition_files(self, asset: str, only: Iterable[str] | None = None, exclude: str | None = None) -> list[Path]:
        folder = self.assets / asset
        if not folder.is_dir():
            return []
        keep = None if only is None else set(only)
        return sorted(p for p in folder.glob("*.parquet") if p.stem != exclude and (keep is None or p.stem in keep))

    def scan_partitions(self, asset: str, only: Iterable[str] | None = None, exclude: str | None = None) -> pl.LazyFrame | None:
        """All stored partitions of `asset` (or those in `only`) as one lazy frame; files written by
        older code versions may lack newer columns, which come back null. An unreadable file raises
        CorruptIntermediateError (its path and the repair command), before anything is read."""
        files = self.partition_files(asset, only=only, exclude=exclude)
        if not files:
            return None
        for f in files:
            check_parquet(f)
        return pl.concat([pl.scan_parquet(str(f)) for f in files], how="diagonal_relaxed")

    def landed_manifest(self, partition: str) -> dict:
        path = self.landed / partition / "landing.json"
        if not path.exists():
            raise FileNotFoundError(
                f"partition {partition!r} has no landed file under {self.landed}; "
                "files enter the pool through the landing sensor or `curate land`"
            )
        return orjson.loads(path.read_bytes())

    def row_cache(self, stage: str, version: str, warn=None) -> RowCache:
        """Per-row results of `stage` under `version`; `warn` hears about quarantined parts."""
        # Path-safe: a ':' would read as a URL scheme to the Parquet readers.
        return RowCache(self.cache / stage / re.sub(r"[^\w.-]", "_", version), warn)

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A scratch folder removed when the block ends, crash or not."""
        path = self.root / "staging" / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True, exist_ok=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
