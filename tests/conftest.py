import os
from pathlib import Path

import dagster as dg
import pytest

from curation_assets.definitions import build_resources
from curation_assets.landing import land_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RAW = SHARED / "data" / "raw"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def raw_data() -> Path:
    """The real public pools in ../shared/data/raw; tests that need them skip without them."""
    if not RAW.is_dir():
        pytest.skip("../shared/data/raw is absent")
    return RAW


@pytest.fixture(scope="session")
def real_tags(raw_data):
    """Keyphrase tags of 300 real instructions (GPTeacher code + GSM8K math + roleplay): (rows,
    leaf labels, their vectors, their counts, the embedder's encode), for the tree tests."""
    import json

    import polars as pl

    texts = [r["instruction"] for r in json.loads((raw_data / "gpteacher" / "codegen-instruct.json").read_text())[:100]]
    texts += [json.loads(line)["question"] for line in (raw_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:100]]
    texts += [r["instruction"] for r in json.loads((raw_data / "gpteacher" / "roleplay-simple-deduped-roleplay-instruct.json").read_text())[:100]]
    from curation_assets.methods.tagging import keyphrase_tags
    from resources.models import EmbedderResource

    encode = EmbedderResource().encode
    tags = keyphrase_tags(texts, encode, top_n=3)
    rows = pl.DataFrame({"row_id": [f"r{i}" for i in range(len(texts))], "canonical_tags": [sorted({t["tag"] for t in ts}) for ts in tags]})
    leaves = rows.explode("canonical_tags").drop_nulls().group_by("canonical_tags").len().sort("canonical_tags")
    labels = leaves["canonical_tags"].to_list()
    return rows, labels, encode(labels), leaves["len"].to_numpy(), encode


@pytest.fixture
def resources(tmp_path):
    return build_resources(str(tmp_path / "home"))


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def ingested_shard(tmp_path, resources, instance, name: str, rows: list[dict]) -> str:
    """Write `rows` as JSON Lines, land the file and materialize its raw_pool; the partition key."""
    import json

    from curation_assets.raw_pool import raw_pool

    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = land(resources, path)
    instance.add_dynamic_partitions("pool_shards", [key])
    assert dg.materialize([raw_pool], resources=resources, partition_key=key, instance=instance).success
    return key


def land(resources, path: Path, name: str | None = None) -> str:
    """Land `path` as a pool shard and return its partition key (what the sensor does)."""
    return land_file(Path(path), resources["storage"].landed, name or Path(path).name).partition


def project_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME at `path` with the project's dagster.yaml (run monitoring, pools) pointing there."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text().replace(".dagster_home", str(path)))
    return path
