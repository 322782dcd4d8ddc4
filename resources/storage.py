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
from pydantic import Field

from resources.row_cache import RowCache


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
        older code versions may lack newer columns, which come back null."""
        files = self.partition_files(asset, only=only, exclude=exclude)
        if not files:
            return None
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
