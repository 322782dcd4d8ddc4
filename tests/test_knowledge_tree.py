"""knowledge_tree.py: the knowledge_tree and tree_memberships assets over the pool's tree tags, and
the tree namer resource naming internal nodes through a local chat endpoint (one call per distinct
prompt, answers cached)."""

import json

import dagster as dg
import polars as pl
import pytest

from conftest import land
from curation_assets.knowledge_tree import TreeNamerResource, knowledge_tree
from curation_assets.normalized_tags import normalized_tags
from curation_assets.open_tags import open_tags
from curation_assets.raw_pool import raw_pool
from curation_assets.methods.tree import TreeSettings, build_tree
from openai_stub import stub_server
from resources.storage import RowCache


def test_internal_nodes_named_by_the_chat_backend(real_tags, tmp_path):
    _, labels, vectors, counts, _ = real_tags
    seen = []

    def reply(body, attempt):
        prompt = body["messages"][-1]["content"]
        seen.append(prompt)
        return 200, f"Topic {len(seen)}\nbecause the children share it", 0

    with stub_server(reply) as (stub, url):
        namer = TreeNamerResource(enabled=True, base_url=url, model="stub", backoff_s=0.01)
        cache = RowCache(tmp_path / "cache")
        nodes = build_tree(labels, vectors, counts, TreeSettings(seed=0), lambda kids: namer.name(kids, cache))
        calls = stub.calls
        again = build_tree(labels, vectors, counts, TreeSettings(seed=0), lambda kids: namer.name(kids, cache))
    internal = nodes.filter(~pl.col("is_leaf") & (pl.col("node_id") != 0))
    assert 1 <= calls <= internal.height  # one call per distinct prompt
    assert stub.calls == calls and again.equals(nodes)  # the second build reads every answer from the cache
    assert all(label.startswith("Topic ") for label in internal["label"])
    assert nodes.filter(pl.col("is_leaf"))["label"].to_list() == sorted(labels) or set(nodes.filter(pl.col("is_leaf"))["label"]) == set(labels)
    assert any("- " in p and "parent topic" in p for p in seen)


def test_asset_puts_every_tree_tag_on_a_leaf_and_every_tagged_row_on_the_tree(tmp_path, resources, instance):
    topics = ["sort a Python list", "reverse a Python list", "bake sourdough bread", "bake a chocolate cake", "solve a linear equation", "factor a quadratic equation"]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"How do I {t}?", "output": f"Here is how to {t}."}) + "\n" for t in topics))
    key = land(resources, path)
    instance.add_dynamic_partitions("pool_shards", [key])
    assets = [raw_pool, open_tags, normalized_tags, knowledge_tree]
    assert dg.materialize(assets[:2], resources=resources, partition_key=key, instance=instance).success
    result = dg.materialize(assets, resources=resources, instance=instance, selection=["normalized_tags", "tag_vocabulary", "knowledge_tree", "tree_memberships"],
                            run_config={"ops": {"normalized_tags": {"config": {"alpha": 1, "n_clusters": 2}}, "knowledge_tree": {"config": {"branching": 2}}}})
    assert result.success
    storage = resources["storage"]
    tags = pl.read_parquet(storage.asset_file("normalized_tags"))
    nodes = pl.read_parquet(storage.asset_file("knowledge_tree"))
    members = pl.read_parquet(storage.asset_file("tree_memberships"))
    tree_tags = set(tags["tree_tags"].explode().drop_nulls())
    assert tree_tags and set(nodes.filter(pl.col("is_leaf"))["label"]) == tree_tags
    root = nodes.filter(pl.col("node_id") == 0)
    assert root["parent_id"].to_list() == [None] and root["depth"].to_list() == [0]
    assert set(members["node_id"]) <= set(nodes.filter(pl.col("is_leaf"))["node_id"])
    tagged = set(tags.filter(pl.col("tree_tags").list.len() > 0)["row_id"])
    assert set(members["row_id"]) == tagged
    assert members.group_by("row_id").agg(pl.col("weight").sum())["weight"].to_list() == pytest.approx([1.0] * len(tagged))
    meta = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("knowledge_tree")}
    assert meta["knowledge_tree"]["leaves"].value == len(tree_tags) and meta["tree_memberships"]["rows_without_leaf"].value == tags.height - len(tagged)
