"""methods/tree.py: the TAGS knowledge tree on real tags and its grounding; leaf concepts,
single-child collapse, tree quality and the Clio refinement on tiny inputs with answers worked out
by hand (a scripted chat model stands in for the LLM's answers)."""

import numpy as np
import polars as pl
import pytest

from curation_assets.methods.tree import (
    TreeSettings,
    ancestors,
    build_tree,
    clio_level,
    collapse_single_children,
    ground_rows,
    ground_vectors,
    leaf_concepts,
    parse_choice,
    parse_names,
    tree_leaves,
    tree_quality,
)


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


def unit(*angles_deg):
    """2-d unit vectors at the given angles: cosine(a, b) = cos(a - b)."""
    a = np.radians(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_leaf_concepts_join_the_most_used_similar_leader_without_chaining():
    # cos(0, 20) = 0.94, cos(20, 40) = 0.94, cos(0, 40) = 0.77; 90 is alone.
    labels = ["python list", "python lists", "list comprehension", "baking"]
    vectors = unit(0, 20, 40, 90)
    assert leaf_concepts(labels, vectors, np.array([5, 2, 1, 3]), 0.9) == ["python list", "python list", "list comprehension", "baking"]
    # The most used tag leads: with "python lists" used most, the other two join it (both within 0.9).
    assert leaf_concepts(labels, vectors, np.array([1, 5, 2, 3]), 0.9) == ["python lists", "python lists", "python lists", "baking"]
    assert leaf_concepts([], np.zeros((0, 2)), np.zeros(0), 0.9) == []


def test_tree_leaves_group_rare_tags_and_drop_one_row_concepts():
    rows = pl.DataFrame({"row_id": ["a", "b", "c", "d"], "raw_tags": [["Cats"], ["cat"], ["kitten care", "Dogs"], ["rare thing"]]})
    vocabulary = pl.DataFrame(
        {
            "raw_tag": ["Cats", "cat", "kitten care", "Dogs", "rare thing"],
            "normalized": ["cat", "cat", "kitten care", "dog", "rare thing"],
            "canonical_tag": ["Cats", "Cats", None, None, None],
            "raw_count": [1, 1, 1, 1, 1],
        }
    )
    directions = {"cats": 0, "kitten care": 15, "dogs": 60, "rare thing": 140}
    encode = lambda texts: unit(*[directions[t] for t in texts])  # noqa: E731
    leaves, vocab = tree_leaves(rows, vocabulary, encode, threshold=0.9, min_rows=2)
    assert leaves["tree_tags"].to_list() == [["Cats"], ["Cats"], ["Cats"], []]  # "Dogs" and "rare thing": one row each
    assert vocab["tree_leaf"].to_list() == ["Cats", "Cats", "Cats", None, None]


def chain_tree():
    # root 0 -> 1 -> 2 -> {3, 4}; 1 and 2 have a single child each (2 repeats its children's label).
    return pl.DataFrame(
        {
            "node_id": [0, 1, 2, 3, 4, 5],
            "parent_id": [None, 0, 1, 2, 2, 0],
            "depth": [0, 1, 2, 3, 3, 1],
            "level": [3, 2, 1, 0, 0, 0],
            "label": ["ROOT", "x", "x", "a", "b", "c"],
            "is_leaf": [False, False, False, True, True, True],
        },
        schema_overrides={"parent_id": pl.Int64, "depth": pl.Int32, "level": pl.Int32},
    )


def test_single_child_chains_collapse_and_ids_stay_contiguous():
    nodes = collapse_single_children(chain_tree())
    assert nodes["label"].to_list() == ["ROOT", "x", "a", "b", "c"]
    assert nodes["node_id"].to_list() == [0, 1, 2, 3, 4]
    assert nodes["parent_id"].to_list() == [None, 0, 1, 1, 0]
    assert nodes["depth"].to_list() == [0, 1, 2, 2, 1]


def test_tree_quality_known_figures():
    nodes = chain_tree()
    memberships = pl.DataFrame({"row_id": ["r1", "r2", "r1", "r3"], "node_id": [3, 3, 4, 5]})
    q = tree_quality(nodes, memberships, pool_rows=4)
    assert q["leaves"] == 3 and q["internal_nodes"] == 2
    assert q["rows_per_leaf_median"] == 1.0 and q["single_row_leaf_share"] == pytest.approx(2 / 3)
    assert q["depth_max"] == 3 and q["leaf_depth_mean"] == pytest.approx(7 / 3)
    assert q["branching_mean"] == pytest.approx(5 / 3) and q["branching_max"] == 2  # children: 0 -> 2, 1 -> 1, 2 -> 2
    assert q["rows_grounded_share"] == 0.75 and q["label_repeats_on_paths"] == 1  # node 2 repeats "x"
    after = tree_quality(collapse_single_children(nodes), memberships.with_columns(pl.col("node_id") - 1), 4)
    assert after["label_repeats_on_paths"] == 0 and after["depth_max"] == 2


def test_parsers_of_the_refinement_answers():
    assert parse_names("1. Python Programming\n- Data Structures\n\n* 'Web APIs'") == ["Python Programming", "Data Structures", "Web APIs"]
    with pytest.raises(ValueError):
        parse_names("  \n ")
    assert parse_choice(3)("I pick 2.") == 1 and parse_choice(3)("7 then 3") == 2
    with pytest.raises(ValueError):
        parse_choice(2)("none fits")


class ScriptedLLM:
    """Answers by prompt kind: fixed parent names, a chosen number per child, renames."""

    def __init__(self, names, choices, renames):
        self.names, self.choices, self.renames, self.prompts = names, choices, renames, []

    def __call__(self, prompts, parse):
        out = []
        for p in prompts:
            self.prompts.append(p)
            if p.startswith("Topic: "):
                text = self.choices[p.split("\n")[0][len("Topic: ") :]]
            elif "Propose" in p:
                text = self.names
            else:
                first_child = p.split("- ")[1].split("\n")[0]
                text = self.renames.get(first_child, "")
            try:
                out.append(parse(text))
            except ValueError:
                out.append(None)
        return out


def test_clio_level_summarizes_merges_votes_and_renames():
    labels = ["list sorting", "dict merge", "bread baking", "cake icing"]
    vectors = unit(0, 10, 80, 90)
    names = {"Python": 5, "Baking": 85, "Cooking": 86}
    embed = lambda texts: unit(*[names.get(t, 0) for t in texts])  # noqa: E731
    llm = ScriptedLLM(
        "Python\npython\nBaking\nCooking",
        # "cake icing" answers off-format: it falls back to the parent nearest by cosine (Baking).
        {"list sorting": "1", "dict merge": "1", "bread baking": "2", "cake icing": "no idea"},
        {"list sorting": "Python Code", "bread baking": ""},  # the second rename fails: its name stays
    )
    settings = TreeSettings(branching=2, neighbourhood=10, votes=1)
    assign, parent_names = clio_level(labels, vectors, np.ones(4), settings, llm, embed, seed=0)
    assert parent_names == ["Python Code", "Baking"]
    assert assign.tolist() == [0, 0, 1, 1]
    summarize = [p for p in llm.prompts if "Propose" in p]
    assert len(summarize) == 1 and "Propose 2 broader" in summarize[0]
    assign_prompts = [p for p in llm.prompts if p.startswith("Topic: ")]
    assert len(assign_prompts) == 4 and "1. Python\n2. Baking" in assign_prompts[0]


def test_majority_vote_wins():
    labels = ["a", "b"]
    llm_answers = iter(["2", "1", "2"])

    def ask(prompts, parse):
        out = []
        for p in prompts:
            if "Propose" in p:
                out.append(parse("First\nSecond"))
            elif p.startswith("Topic: a"):
                out.append(parse(next(llm_answers)))
            elif p.startswith("Topic: b"):
                out.append(parse("1"))
            else:
                out.append(None)
        return out

    embed = lambda texts: unit(*[{"First": 0, "Second": 90}.get(t, 45) for t in texts])  # noqa: E731
    assign, names = clio_level(labels, unit(0, 5), np.ones(2), TreeSettings(branching=1, neighbourhood=10, votes=3), ask, embed, seed=0)
    assert [names[k] for k in assign] == ["Second", "First"]  # a: votes 2, 1, 2


def test_refined_tree_uses_the_llm_names_and_stays_consistent():
    rng = np.random.default_rng(0)
    labels = [f"tag {i}" for i in range(30)]
    vectors = rng.normal(size=(30, 8)).astype(np.float32)

    def ask(prompts, parse):
        out = []
        for p in prompts:
            if "Propose" in p:
                text = "\n".join(f"Group {p.count('- ')} {k}" for k in range(3))
            elif p.startswith("Topic: "):
                text = str(1 + int(p.split("\n")[0].split()[-1]) % 3)
            else:
                text = "Named " + p.split("- ")[1].split("\n")[0]
            out.append(parse(text))
        return out

    embed = lambda texts: np.stack([np.eye(8, dtype=np.float32)[sum(map(ord, t)) % 8] for t in texts])  # noqa: E731
    nodes = build_tree(labels, vectors, np.ones(30), TreeSettings(branching=3, top=4, neighbourhood=10), refine=(ask, embed))
    internal = nodes.filter(~pl.col("is_leaf") & (pl.col("node_id") != 0))
    assert internal.height >= 2 and all(label.startswith("Named ") for label in internal["label"])
    assert sorted(nodes.filter(pl.col("is_leaf"))["label"]) == sorted(labels)
    rows = pl.DataFrame({"row_id": [str(i) for i in range(30)], "tree_tags": [[t] for t in labels]})
    assert tree_quality(nodes, ground_rows(rows, nodes), 30)["rows_grounded_share"] == 1.0
