"""The TAGS knowledge tree on real tags, its grounding, and LLM naming through a local endpoint."""

import json

import numpy as np
import polars as pl
import pytest

from curation_assets.knowledge_tree import TreeNamerResource
from curation_assets.methods.tagging import keyphrase_tags
from curation_assets.methods.tree import TreeSettings, ancestors, build_tree, ground_rows, ground_vectors
from openai_stub import stub_server
from resources.models import EmbedderResource
from resources.storage import RowCache


@pytest.fixture(scope="module")
def real_tags(raw_data):
    """Keyphrase tags of 300 real instructions (GPTeacher code + GSM8K math + roleplay)."""
    texts = [r["instruction"] for r in json.loads((raw_data / "gpteacher" / "codegen-instruct.json").read_text())[:100]]
    texts += [json.loads(line)["question"] for line in (raw_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:100]]
    texts += [r["instruction"] for r in json.loads((raw_data / "gpteacher" / "roleplay-simple-deduped-roleplay-instruct.json").read_text())[:100]]
    encode = EmbedderResource().encode
    tags = keyphrase_tags(texts, encode, top_n=3)
    rows = pl.DataFrame({"row_id": [f"r{i}" for i in range(len(texts))], "canonical_tags": [sorted({t["tag"] for t in ts}) for ts in tags]})
    leaves = rows.explode("canonical_tags").drop_nulls().group_by("canonical_tags").len().sort("canonical_tags")
    labels = leaves["canonical_tags"].to_list()
    return rows, labels, encode(labels), leaves["len"].to_numpy(), encode


def test_tree_structure(real_tags):
    rows, labels, vectors, counts, _ = real_tags
    nodes = build_tree(labels, vectors, counts, TreeSettings(branching=5, top=20, seed=0))
    depth = int(nodes["depth"].max())
    leaves = nodes.filter(pl.col("is_leaf"))
    assert leaves.height == len(labels) and depth >= 3
    assert sorted(nodes["node_id"]) == list(range(nodes.height))  # contiguous ids (TreeIndex needs them)
    # Single-child chains are collapsed: every internal node but the root has two or more children.
    n_kids = nodes.drop_nulls("parent_id").group_by("parent_id").len()
    assert n_kids.filter(pl.col("parent_id") != 0)["len"].min() >= 2
    assert nodes.filter(pl.col("depth") == 1).height <= 20
    root = nodes.filter(pl.col("node_id") == 0).row(0, named=True)
    assert root["parent_id"] is None and root["n_leaves"] == len(labels)
    # Every internal node's leaves and rows are the sums over its children; member tags likewise.
    kids = nodes.filter(pl.col("parent_id").is_not_null()).group_by("parent_id").agg(pl.col("n_leaves").sum(), pl.col("leaf_rows").sum(), pl.col("member_tags").flatten())
    joined = nodes.join(kids, left_on="node_id", right_on="parent_id", suffix="_kids")
    assert (joined["n_leaves"] == joined["n_leaves_kids"]).all()
    assert np.allclose(joined["leaf_rows"], joined["leaf_rows_kids"])
    assert all(sorted(a) == sorted(b) for a, b in zip(joined["member_tags"], joined["member_tags_kids"]))
    assert np.allclose(np.linalg.norm(nodes["embedding"].to_numpy(), axis=1), 1.0, atol=1e-5)
    paths = ancestors(nodes)
    assert all(len(paths[n]) == d for n, d in zip(leaves["node_id"], leaves["depth"]))
    parent_depth = dict(zip(nodes["node_id"], nodes["depth"]))
    assert all(parent_depth[p] == d - 1 for p, d in zip(nodes["parent_id"], nodes["depth"]) if p is not None)


def test_same_seed_same_tree(real_tags):
    _, labels, vectors, counts, _ = real_tags
    a = build_tree(labels, vectors, counts, TreeSettings(seed=7))
    b = build_tree(labels, vectors, counts, TreeSettings(seed=7))
    assert a.equals(b)
    c = build_tree(labels, vectors, counts, TreeSettings(seed=8))
    assert not a.select("parent_id").equals(c.select("parent_id"))


def test_grounding_rows_and_unknown_tags(real_tags):
    rows, labels, vectors, counts, encode = real_tags
    nodes = build_tree(labels, vectors, counts, TreeSettings(seed=0))
    memberships = ground_rows(rows, nodes, "canonical_tags")
    tagged = rows.filter(pl.col("canonical_tags").list.len() > 0)
    assert memberships["row_id"].n_unique() == tagged.height
    assert np.allclose(memberships.group_by("row_id").agg(pl.col("weight").sum())["weight"], 1.0)
    leaf_ids = set(nodes.filter(pl.col("is_leaf"))["node_id"])
    assert set(memberships["node_id"]) <= leaf_ids
    # A known tag grounds on its own leaf; an unrelated concept on an internal node (tau rule).
    known = labels[0]
    ids, sims = ground_vectors(encode([known, "medieval tapestry restoration techniques"]), nodes, tau=0.75)
    assert ids[0] == nodes.filter(pl.col("is_leaf") & (pl.col("label") == known))["node_id"].item() and sims[0] > 0.99
    assert ids[1] not in leaf_ids and ids[1] != 0


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
