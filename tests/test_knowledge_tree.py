"""knowledge_tree.py: the knowledge_tree and tree_memberships assets over the pool's tree tags, and
the tree namer resource naming internal nodes through a local chat endpoint (one call per distinct
prompt, answers cached)."""

import json
from pathlib import Path

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


def test_demo_pool_tree_has_leaf_concepts_shared_by_rows(tmp_path, instance):
    """Issue 13 item 4: on the demo pool, with exactly the settings curation.yaml gives the demo
    (the definitions the UI loads), keyphrase tags grouped into leaf concepts put a median of at
    least 3 rows on a leaf (per-phrase leaves gave 1)."""
    from curation_assets.definitions import project_definitions
    from curation_assets.landing import files_inside, is_data_file, scan_landing
    from curation_assets.project import ProjectConfig

    root = Path(__file__).resolve().parents[1]
    config = ProjectConfig.load(root / "curation.yaml")
    config.home = str(tmp_path / "home")
    defs = project_definitions(config)
    storage = defs.resources["storage"]
    landed, _ = scan_landing(root / "demo" / "pool", storage.landed, {}, set(), min_age_seconds=0)
    assert len(landed) == sum(is_data_file(p) for p in files_inside(root / "demo" / "pool")) >= 7
    keys = [f.partition for f in landed]
    instance.add_dynamic_partitions("pool_shards", keys)
    graph = defs.resolve_asset_graph()
    assets = {graph.assets_def_for_key(k) for k in graph.get_all_asset_keys()}
    for key in keys:
        assert dg.materialize(list(assets), instance=instance, partition_key=key, selection=["raw_pool", "raw_pool_quarantine", "open_tags"]).success
    result = dg.materialize(list(assets), instance=instance, selection=["normalized_tags", "tag_vocabulary", "knowledge_tree", "tree_memberships"])
    assert result.success
    meta = {m.asset_key.path[-1]: m.metadata for m in result.asset_materializations_for_node("knowledge_tree")}["knowledge_tree"]
    assert meta["quality/rows_per_leaf_median"].value >= 3, {k: v.value for k, v in meta.items() if k.startswith("quality/")}
    members = pl.read_parquet(storage.asset_file("tree_memberships"))
    nodes = pl.read_parquet(storage.asset_file("knowledge_tree"))
    per_leaf = members.group_by("node_id").agg(pl.col("row_id").n_unique())["row_id"]
    assert per_leaf.median() == meta["quality/rows_per_leaf_median"].value  # the metadata is the stored tree's
    assert nodes.filter(pl.col("is_leaf")).height == meta["leaves"].value
