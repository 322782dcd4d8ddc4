"""TACOS / InsTag tag normalization with the real packaged embedder."""

import json

import numpy as np
import polars as pl
import pytest

from curation_assets.methods.tag_normalization import NormalizationSettings, normalize_tags, rule_normalize
from curation_assets.methods.tagging import keyphrase_tags
from resources.models import EmbedderResource


@pytest.fixture(scope="module")
def encode():
    return EmbedderResource().encode


@pytest.mark.parametrize(
    "tag,word,phrase",
    [
        ("Questions Answering", "question answer", "questions answ"),  # TACOS stems only the last word
        ("Math.", "math", "math "),  # ...and keeps a trailing space
        ("C++ programming", "c++ program", "c program"),  # ...and loses C++
        ("C# / .NET", "c# .net", "c net"),
        ("Generation", "generat", "gener"),  # Porter merges Generation/General; Snowball does not
        ("General", "general", "gener"),
        ("Data-Analysis", "data analysi", "data analysi"),
    ],
)
def test_rule_normalization(tag, word, phrase):
    assert rule_normalize(tag) == word
    assert rule_normalize(tag, "phrase") == phrase


def rows_from(tag_lists, responses=None):
    n = len(tag_lists)
    return pl.DataFrame({
        "row_id": [f"r{i}" for i in range(n)],
        "raw_tags": tag_lists,
        "response_chars": responses or [10] * n,
        "pool_order": list(range(n)),
    })


def test_frequency_filter_counts_rows_after_the_rules(encode):
    tags = [["Math"], ["math."], ["MATH"], ["Poetry"], ["Poetry", "poetry"]]
    settings = NormalizationSettings(alpha=3, merge_threshold=None, n_clusters=2)
    out, vocab = normalize_tags(rows_from(tags), encode, settings)
    labels = out["canonical_tags"].to_list()
    assert labels[0] == labels[1] == labels[2] and labels[0][0] in {"Math", "math.", "MATH"} and labels[3:] == [[], []]
    assert vocab.filter(pl.col("raw_tag") == "Poetry")["dropped_reason"].item() == "used by fewer than 3 rows"
    # TACOS counts raw strings: no spelling of "math" reaches 3 rows on its own.
    raw, _ = normalize_tags(rows_from(tags), encode, NormalizationSettings(alpha=3, count_on="raw", merge_threshold=None))
    assert raw["n_canonical"].sum() == 0
    # The TAGS tree keeps the long tail: "poetry" (2 rows) is a leaf; "sonnet" (1 row) is not.
    tree = normalize_tags(rows_from(tags + [["Sonnet"]]), encode, settings)[0]["tree_tags"].to_list()
    assert tree[:3] == labels[:3] and tree[3] == tree[4] == ["Poetry"] and tree[5] == []
    # Counted on rows whatever count_on says: "math" has 3 rows in three spellings.
    tree_raw, vocab_raw = normalize_tags(rows_from(tags), encode, NormalizationSettings(alpha=3, count_on="raw", merge_threshold=None, tree_min_rows=3))
    assert tree_raw["tree_tags"].to_list() == [["MATH"]] * 3 + [[], []]  # "poetry" has 2 rows < 3
    assert set(vocab_raw["stem"]) == {"word"}


def tacos_frequency_filter(tag_lists, alpha):
    """tag_cluster.py's count_tag_frequency + filter_tag_by_frequency restated: count every
    occurrence of each raw string, drop those below alpha, drop rows left without tags."""
    count = {}
    for tags in tag_lists:
        for tag in tags:
            count[tag] = count.get(tag, 0) + 1
    kept = {t for t, n in count.items() if n >= alpha}
    return [[t for t in tags if t in kept] for tags in tag_lists]


def test_raw_count_counts_occurrences_as_tacos(encode):
    # "Math" occurs 3 times in 2 rows (the tagger repeated it once): TACOS keeps it at alpha 3.
    tags = [["Math", "Algebra", "Math"], ["Math"], ["Poetry"], ["Poetry"], ["Algebra"], ["Algebra"]]
    expected = tacos_frequency_filter(tags, alpha=3)
    assert expected == [["Math", "Algebra", "Math"], ["Math"], [], [], ["Algebra"], ["Algebra"]]
    out, vocab = normalize_tags(rows_from(tags), encode, NormalizationSettings(alpha=3, count_on="raw", merge_threshold=None, n_clusters=2))
    assert [sorted(set(t)) for t in out["canonical_tags"].to_list()] == [sorted(set(t)) for t in expected]
    assert vocab.filter(pl.col("raw_tag") == "Math")["raw_count"].item() == 3
    assert vocab.filter(pl.col("raw_tag") == "Poetry")["dropped_reason"].item() == "occurs fewer than 3 times"
    # Counting rows (the default, after the rules) drops "Math": 2 rows < 3.
    rows, _ = normalize_tags(rows_from(tags), encode, NormalizationSettings(alpha=3, merge_threshold=None, n_clusters=2))
    assert rows["canonical_tags"].to_list()[1] == []


def test_clusters_in_tag_order_follow_the_rows_tags(encode):
    tags = [["poetry", "sorting algorithms"], ["sorting algorithms", "poetry"], ["poetry"], ["sorting algorithms"]]
    out, vocab = normalize_tags(rows_from(tags), encode, NormalizationSettings(alpha=1, merge_threshold=None, n_clusters=2))
    cluster = dict(zip(vocab["raw_tag"], vocab["cluster"]))
    assert cluster["poetry"] != cluster["sorting algorithms"]
    assert out["clusters_in_tag_order"].to_list() == [[cluster[t] for t in row] for row in tags]
    assert out["clusters"].to_list()[:2] == [sorted(cluster.values())] * 2  # the label set stays sorted


def test_semantic_merge_joins_near_synonyms_under_the_most_used(encode):
    tags = [["data visualization"], ["data visualization"], ["data visualisation"], ["colour theory"], ["color theory"], ["color theory"], ["poetry"]]
    out, vocab = normalize_tags(rows_from(tags), encode, NormalizationSettings(alpha=1, n_clusters=3))
    assert out["canonical_tags"].to_list() == [["data visualization"]] * 3 + [["color theory"]] * 3 + [["poetry"]]
    assert vocab.filter(pl.col("raw_tag") == "data visualisation")["canonical_tag"].item() == "data visualization"
    unmerged, _ = normalize_tags(rows_from(tags), encode, NormalizationSettings(alpha=1, n_clusters=3, merge_threshold=None))
    assert unmerged["canonical_tags"].explode().n_unique() == 5


def test_association_merges_tags_that_always_co_occur(encode):
    tags = [["sql", "database query"]] * 5 + [["database query"]] * 2 + [["sql", "database query", "joins"]] + [["poetry"]] * 3
    settings = NormalizationSettings(alpha=1, merge_threshold=None, association=True, min_support=5, min_confidence=0.99, n_clusters=2)
    out, _ = normalize_tags(rows_from(tags), encode, settings)
    # sql (6 rows) always comes with "database query" (8 rows): they merge under the more used one.
    assert out["canonical_tags"][0].to_list() == ["database query"]
    assert out["canonical_tags"][7].to_list() == ["database query", "joins"]
    off, _ = normalize_tags(rows_from(tags), encode, NormalizationSettings(alpha=1, merge_threshold=None, n_clusters=2))
    assert off["canonical_tags"][0].to_list() == ["database query", "sql"]


def test_clusters_labelset_dedup_and_seed_determinism(raw_data, encode):
    rows = json.loads((raw_data / "gpteacher" / "codegen-instruct.json").read_text())[:150]
    tags = keyphrase_tags([r["instruction"] for r in rows], encode, top_n=4)
    frame = rows_from([[t["tag"] for t in ts] for ts in tags], [len(r["response"]) for r in rows])
    settings = NormalizationSettings(alpha=2, n_clusters=8, seed=3)
    out, vocab = normalize_tags(frame, encode, settings)
    again, _ = normalize_tags(frame, encode, settings)
    assert out.equals(again)
    tagged = out.filter(pl.col("n_canonical") > 0)
    assert tagged.height > 100 and out["clusters"].explode().drop_nulls().n_unique() == 8
    assert all(c == sorted(set(c)) for c in out["clusters"].to_list())
    # Every cluster set has exactly one representative: its longest response, earliest on ties.
    sets = tagged.with_columns(pl.col("clusters").cast(pl.List(pl.String)).list.join(",").alias("key"))
    for _, group in sets.group_by("key"):
        rep = group.filter(pl.col("labelset_representative"))
        assert rep.height == 1
        best = group.sort(["response_chars", "row_id"], descending=[True, False]).row(0, named=True)
        assert rep["response_chars"].item() == best["response_chars"]
        # TACOS keeps the set's first slot: members are ordered by where the set first appeared.
        assert group["labelset_first_seen"].unique().to_list() == [group["row_id"].str.slice(1).cast(pl.Int64).min()]
    assert out.filter(pl.col("n_canonical") == 0)["labelset_representative"].sum() == 0
    # Every raw tag is accounted for in the vocabulary: kept with a canonical tag, or dropped with a reason.
    assert vocab.filter(pl.col("canonical_tag").is_null() & pl.col("dropped_reason").is_null()).is_empty()
    assert np.isin(vocab.drop_nulls("cluster")["cluster"].to_numpy(), np.arange(8)).all()
