"""warmup_adapter.py: the LESS warm-up share and the asset on a tiny random Llama (one LoRA adapter
and Adam state per epoch, the checkpoints' learning-rate weights)."""

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from conftest import land
from curation_assets.raw_pool import raw_pool
from curation_assets.warmup_adapter import warmup_adapter, warmup_share
from resources.target_model import TargetModelResource

TINY = Path(__file__).parent / "fixtures" / "tiny_llama"
WARMUP = {"share": 4, "rank": 4, "alpha": 16, "epochs": 2, "batch_size": 2, "max_length": 128, "seed": 1}


def test_warmup_share_is_a_seeded_share_or_count_in_pool_order():
    ids = [f"r{i}" for i in range(10)]
    half = warmup_share(ids, 0.5, seed=0)
    assert len(half) == 5 and half == sorted(half) and half == warmup_share(ids, 0.5, seed=0) != warmup_share(ids, 0.5, seed=1)
    assert len(warmup_share(ids, 0.01, 0)) == 1  # at least one row
    assert len(warmup_share(ids, 3, 0)) == 3 and warmup_share(ids, 50, 0) == list(range(10))  # > 1: a count, at most the pool


def materialize_pool(tmp_path, resources, instance, n=6):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Add {i} and {i + 1}.", "output": f"The sum is {2 * i + 1}."}) + "\n" for i in range(n)))
    key = land(resources, path)
    instance.add_dynamic_partitions("pool_shards", [key])
    assert dg.materialize([raw_pool], resources=resources, partition_key=key, instance=instance).success
    return key


def test_asset_trains_one_checkpoint_per_epoch_with_lr_weights(tmp_path, resources, instance):
    materialize_pool(tmp_path, resources, instance)
    res = {**resources, "target_model": TargetModelResource(model=str(TINY), device="cpu")}
    result = dg.materialize([raw_pool, warmup_adapter], resources=res, instance=instance, selection=[warmup_adapter.key],
                            run_config={"ops": {"warmup_adapter": {"config": WARMUP}}})
    assert result.success
    table = pl.read_parquet(resources["storage"].asset_file("warmup_adapter"))
    assert table["epoch"].to_list() == [1, 2] and table["key"].n_unique() == 1
    assert table["weight"].sum() == pytest.approx(1.0) and (table["weight"] > 0).all()
    assert all((Path(d) / "adapter_model.safetensors").exists() for d in table["adapter_dir"]) and all(Path(p).exists() for p in table["optimizer_path"])
    meta = result.asset_materializations_for_node("warmup_adapter")[0].metadata
    assert meta["warmup_rows"].value.startswith("4 of 6 pool rows") and meta["dagster/row_count"].value == 2
    assert "data:image/png" in meta["loss_curve"].value


def test_an_empty_pool_is_a_clear_failure(resources, instance):
    res = {**resources, "target_model": TargetModelResource(model=str(TINY), device="cpu")}
    result = dg.materialize([warmup_adapter], resources=res, instance=instance, raise_on_error=False,
                            run_config={"ops": {"warmup_adapter": {"config": WARMUP}}})
    assert not result.success
    assert "the pool is empty" in str(result.get_step_failure_events()[0].event_specific_data.error)
