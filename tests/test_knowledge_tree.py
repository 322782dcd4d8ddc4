"""knowledge_tree.py: the tree namer resource names internal nodes through a local chat endpoint,
one call per distinct prompt, answers cached."""

import polars as pl

from curation_assets.knowledge_tree import TreeNamerResource
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
