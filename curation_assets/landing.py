"""Landing: turn files dropped in the landing folder into immutable, content-addressed pool shards.

One shard (dynamic partition) per file version. The key is `<relative path>@<digest prefix>`, so a
changed file under the same name is a new version beside the old one, and identical content is
never landed twice. The landed copy is what `raw_pool` reads, so later edits to the landing folder
cannot change a partition that already exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson

from curation_assets.methods.ingest import file_digest, is_data_file, sidecar_path

DIGEST_CHARS = 12


@dataclass(frozen=True)
class LandedFile:
    partition: str
    source_path: str
    data_path: Path
    digest: str


def version_digest(path: Path) -> str:
    """Digest of a file together with its ingest sidecar: changing either makes a new version."""
    digest = file_digest(path)
    sidecar = sidecar_path(path)
    if sidecar.exists():
        digest = hashlib.sha256((digest + file_digest(sidecar)).encode()).hexdigest()
    return digest


def partition_key_for(relative_path: str, digest: str) -> str:
    return f"{relative_path.replace(os.sep, '/').replace('/', '__')}@{digest[:DIGEST_CHARS]}"


def digest_of_partition(partition: str) -> str:
    return partition.rsplit("@", 1)[-1]


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, symlinks followed, lies inside `folder`."""
    return path.resolve().is_relative_to(folder.resolve())


def files_inside(folder: Path) -> list[Path]:
    """Files under `folder`, never one that a symlink takes out of it (a link to /etc/passwd, or to
    another user's data, is not part of the pool)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and inside(p, folder))


def land_file(path: Path, landed_root: Path, relative_path: str, digest: str | None = None) -> LandedFile:
    """Copy `path` (and its sidecar) into `landed_root/<partition>/`, atomically."""
    digest = digest or version_digest(path)
    partition = partition_key_for(relative_path, digest)
    target = landed_root / partition
    if partition.startswith(".") or not inside(target, landed_root):
        raise ValueError(f"cannot land {relative_path!r}: its shard folder {target} would lie outside {landed_root}")
    if not (target / "landing.json").exists():
        tmp = landed_root / f".{partition}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(path, tmp / path.name)
        if sidecar_path(path).exists():
            shutil.copy2(sidecar_path(path), tmp / sidecar_path(path).name)
        manifest = {
            "partition": partition,
            "source_path": relative_path,
            "file_name": path.name,
            "digest": digest,
            "bytes": path.stat().st_size,
            "landed_at": datetime.now(timezone.utc).isoformat(),
        }
        (tmp / "landing.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return LandedFile(partition, relative_path, target / path.name, digest)


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()
    side = sidecar_path(path)
    sst = side.stat() if side.exists() else None
    return [st.st_size, st.st_mtime_ns, sst.st_size if sst else -1, sst.st_mtime_ns if sst else -1]


def scan_landing(
    landing: Path,
    landed_root: Path,
    cursor: dict[str, dict],
    known_partitions: set[str],
    *,
    max_bytes: int = 20 << 30,
    min_age_seconds: float = 2.0,
) -> tuple[list[LandedFile], dict[str, dict]]:
    """Land new file versions found under `landing`.

    `cursor` maps relative path -> {"stat": fingerprint, "digest": ...}; a file whose size and
    modification time are unchanged is not read again. Symlinks that lead out of `landing` are
    not followed. Files younger than `min_age_seconds` may
    still be being written and wait for the next scan; so do files past the `max_bytes` budget.
    Returns the newly landed files and the updated cursor.
    """
    cursor = dict(cursor)
    known = {digest_of_partition(p) for p in known_partitions}
    landed: list[LandedFile] = []
    budget = max_bytes
    if not landing.is_dir():
        return landed, cursor
    for path in files_inside(landing):
        if not is_data_file(path):
            continue
        rel = path.relative_to(landing).as_posix()
        fingerprint = _fingerprint(path)
        if cursor.get(rel, {}).get("stat") == fingerprint:
            continue
        if time.time() - path.stat().st_mtime < min_age_seconds or fingerprint[0] > budget and landed:
            continue
        budget -= fingerprint[0]
        digest = version_digest(path)
        cursor[rel] = {"stat": fingerprint, "digest": digest}
        if digest[:DIGEST_CHARS] in known:
            continue
        landed.append(land_file(path, landed_root, rel, digest))
        known.add(digest[:DIGEST_CHARS])
    return landed, cursor
