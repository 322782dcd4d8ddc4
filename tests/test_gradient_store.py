"""gradient_store.py: a shard's LESS gradient features per warm-up checkpoint on a tiny random Llama
(fp16 arrays, unit rows, row_id -> position, reused when nothing changed)."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from conftest import land
from curation_assets.gradient_store import gradient_store
from curation_assets.raw_pool import raw_pool
from curation_assets.warmup_adapter import warmup_adapter
from resources.target_model import TargetModelResource

TINY = Path(__file__).parent / "fixtures" / "tiny_llama"
WARMUP = {"ops": {"warmup_adapter": {"config": {"share": 3, "rank": 4, "alpha": 16, "epochs": 2, "batch_size": 2, "max_length": 128, "seed": 1}}}}
STORE = {"ops": {"gradient_store": {"config": {"proj_dim": 64, "max_length": 64, "max_tokens": 1024}}}}


def test_features_per_checkpoint_and_a_note_for_rows_without_an_answer_token(tmp_path, resources, instance):
    rows = [{"instruction": f"Add {i} and {i + 1}.", "output": f"The sum is {2 * i + 1}."} for i in range(4)]
    rows.append({"instruction": "word " * 200, "output": "Too late to fit."})  # no assistant token within max_length 64
    rows.append(rows[0])  # a duplicate within the file: not canonical, no features
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = land(resources, path)
    instance.add_dynamic_partitions("pool_shards", [key])
    res = {**resources, "target_model": TargetModelResource(model=str(TINY), device="cpu")}
    assets = [raw_pool, warmup_adapter, gradient_store]
    assert dg.materialize([raw_pool], resources=res, partition_key=key, instance=instance).success
    assert dg.materialize(assets, resources=res, instance=instance, selection=[warmup_adapter.key], run_config=WARMUP).success
    result = dg.materialize(assets, resources=res, instance=instance, partition_key=key, selection=[gradient_store.key], run_config=STORE)
    assert result.success
    table = pl.read_parquet(resources["storage"].asset_file("gradient_store", key))
    assert table.height == 5 and table["position"].to_list() == [0, 1, 2, 3, -1]
    assert table["note"].to_list()[:4] == [None] * 4 and table["note"][4] == "no assistant token within max_length 64"
    meta = result.asset_materializations_for_node("gradient_store")[0].metadata
    assert (meta["rows_with_features"].value, meta["rows_without"].value, meta["checkpoints"].value) == (4, 1, 2)
    assert meta["reused_files"].value is False
    arrays = [np.load(f) for f in meta["files"].value]
    assert len(arrays) == 2 and all(a.shape == (4, 64) and a.dtype == np.float16 for a in arrays)
    assert all(np.allclose(np.linalg.norm(a.astype(np.float32), axis=1), 1.0, atol=1e-2) for a in arrays)  # normalized
    assert not np.allclose(arrays[0], arrays[1])  # each checkpoint its own gradients
    again = dg.materialize(assets, resources=res, instance=instance, partition_key=key, selection=[gradient_store.key], run_config=STORE)
    assert again.asset_materializations_for_node("gradient_store")[0].metadata["reused_files"].value is True
    assert all(np.array_equal(np.load(f), a) for f, a in zip(meta["files"].value, arrays))
