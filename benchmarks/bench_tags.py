"""Tag normalization and tree building at scale, and tagging throughput per backend.

Part 1: 100,000 rows carrying 50,000 distinct tags. The tags are real word n-grams harvested from
the instruction pools in ../shared/data (the most frequent 1-3-grams without stop words); each row
gets 1-8 of them, the count drawn from TACOS's Alpaca tags-per-row histogram and the tags from a
Zipf law (every tag used at least once). Times: embedding the tags, normalization (rules,
frequency filter, exact semantic merge, weighted k-means K=50) and the tree (levels of spherical
k-means, grounding). Peak memory is the process's resident peak (ru_maxrss).

Part 2: tagging throughput of the backends that run here: offline keyphrases (packaged
all-MiniLM-L6-v2), local transformers generation (a random GPT-2-size model, 124M parameters, so
only the speed means anything), and the OpenAI-compatible client against a local stub server
(client overhead and concurrency only; a real endpoint's speed is the endpoint's).

    python benchmarks/bench_tags.py [--rows 100000] [--tags 50000] [--skip-backends]
"""

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SHARED = ROOT.parent / "shared" / "data" / "raw"
TACOS_TAGS_PER_ROW = {1: 1890, 2: 17443, 3: 26191, 4: 5348, 5: 933, 6: 141, 7: 32, 8: 22}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def instructions() -> list[str]:
    texts = []
    for name in ["alpagasus/random_9k.json", "alpagasus/dolly_3k.json", "codealpaca/code_alpaca_2k.json", "gpteacher/codegen-instruct.json", "gpteacher/toolformer-dedupe-only-dataset.json", "gpteacher/roleplay-simple-deduped-roleplay-instruct.json"]:
        texts += [r["instruction"] for r in json.loads((SHARED / name).read_text())]
    texts += [json.loads(line)["question"] for line in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()]
    for path in sorted((SHARED / "t0_p3_50k" / "data_per_template").glob("*.jsonl")):
        texts += [json.loads(line)["prompt"][:300] for line in path.read_text().splitlines()]
    return texts


def synthetic_rows(n_rows: int, n_tags: int, seed: int = 0) -> pl.DataFrame:
    from sklearn.feature_extraction.text import CountVectorizer

    counts = CountVectorizer(ngram_range=(1, 3), stop_words="english", min_df=1, token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b").fit_transform(instructions())
    vocab = CountVectorizer(ngram_range=(1, 3), stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b").fit(instructions()).get_feature_names_out()
    freq = np.asarray(counts.sum(axis=0)).ravel()
    tags = vocab[np.argsort(-freq, kind="stable")[:n_tags]]
    rng = np.random.default_rng(seed)
    k = np.array(list(TACOS_TAGS_PER_ROW))
    per_row = rng.choice(k, size=n_rows, p=np.array(list(TACOS_TAGS_PER_ROW.values())) / sum(TACOS_TAGS_PER_ROW.values()))
    zipf = 1.0 / np.arange(1, n_tags + 1) ** 1.1
    draws = rng.choice(n_tags, size=int(per_row.sum()), p=zipf / zipf.sum())
    draws[:n_tags] = rng.permutation(n_tags)  # every tag at least once
    splits = np.split(draws, np.cumsum(per_row)[:-1])
    return pl.DataFrame({
        "row_id": [f"r{i}" for i in range(n_rows)],
        "raw_tags": [[str(tags[j]) for j in s] for s in splits],
        "response_chars": rng.integers(10, 2000, n_rows),
        "pool_order": np.arange(n_rows),
    })


def part1(n_rows: int, n_tags: int) -> None:
    from curation_assets.methods.tag_normalization import NormalizationSettings, normalize_tags
    from curation_assets.methods.tree import TreeSettings, build_tree, ground_rows, tree_leaves, tree_quality
    from resources.models import EmbedderResource

    rows = synthetic_rows(n_rows, n_tags)
    distinct = rows["raw_tags"].explode().n_unique()
    print(f"part 1: {rows.height:,} rows, {distinct:,} distinct tags, {rows['raw_tags'].list.len().mean():.2f} tags per row")
    embedder = EmbedderResource()
    base = rss_mb()
    timings = {}
    t = time.perf_counter()
    embedder.encode(sorted(rows["raw_tags"].explode().unique().str.to_lowercase().to_list()))
    timings["embed tags (MiniLM, CPU)"] = time.perf_counter() - t
    t = time.perf_counter()
    out, vocab = normalize_tags(rows, embedder.encode, NormalizationSettings(alpha=1, n_clusters=50))
    timings["normalize (rules, merge, k-means 50)"] = time.perf_counter() - t
    leaves = out.select("row_id", "tree_tags").explode("tree_tags").drop_nulls().group_by("tree_tags").len().sort("tree_tags")
    labels = leaves["tree_tags"].to_list()
    t = time.perf_counter()
    nodes = build_tree(labels, embedder.encode([x.lower() for x in labels]), leaves["len"].to_numpy(), TreeSettings())
    memberships = ground_rows(out, nodes)
    timings["tree + grounding"] = time.perf_counter() - t
    t = time.perf_counter()
    concept_rows, _ = tree_leaves(rows, vocab, embedder.encode, 0.9, 2)
    timings["leaf concepts (cosine 0.9)"] = time.perf_counter() - t
    concepts = concept_rows.explode("tree_tags").drop_nulls().group_by("tree_tags").len().sort("tree_tags")
    t = time.perf_counter()
    concept_nodes = build_tree(concepts["tree_tags"].to_list(), embedder.encode([x.lower() for x in concepts["tree_tags"]]), concepts["len"].to_numpy(), TreeSettings())
    concept_members = ground_rows(concept_rows, concept_nodes)
    timings["tree over leaf concepts + grounding"] = time.perf_counter() - t
    for name, seconds in timings.items():
        print(f"  {name:<40}{seconds:>8.1f} s")
    print(f"  {'total':<40}{sum(timings.values()):>8.1f} s")
    print(f"  canonical tags {len(labels):,}; tree: {nodes.height:,} nodes, depth {nodes['depth'].max()}, "
          f"{memberships.height:,} memberships; peak RSS {rss_mb():,.0f} MiB ({rss_mb() - base:,.0f} over the start)")
    print_quality({"one leaf per tag": tree_quality(nodes, memberships, rows.height), "leaf concepts": tree_quality(concept_nodes, concept_members, rows.height)})


def print_quality(trees: dict[str, dict]) -> None:
    names = list(trees)
    width = max(20, *(len(n) + 2 for n in names))
    print(f"  {'tree quality':<28}" + "".join(f"{n:>{width}}" for n in names))
    for key in trees[names[0]]:
        print(f"  {key:<28}" + "".join(f"{trees[n][key]:>{width}.3f}" if isinstance(trees[n][key], float) else f"{trees[n][key]:>{width},}" for n in names))


def demo_pool_figures() -> None:
    """The demo pool with curation.yaml's (the demo's) tagging and tree settings: per-tag leaves (before issue
    13's leaf concepts and min_df) against leaf concepts (now)."""
    import yaml

    from curation_assets.knowledge_tree import KnowledgeTreeConfig
    from curation_assets.methods.ingest import IngestOptions, ingest_file, load_options
    from curation_assets.methods.tag_normalization import normalize_tags
    from curation_assets.methods.tagging import keyphrase_tags
    from curation_assets.methods.tree import TreeSettings, build_tree, ground_rows, tree_leaves, tree_quality
    from curation_assets.normalized_tags import NormalizedTagsConfig
    from resources.models import EmbedderResource
    from resources.tagger import TaggerResource

    cfg = yaml.safe_load((ROOT / "curation.yaml").read_text())
    tagger = TaggerResource(**cfg["resources"]["tagger"])
    norm = NormalizedTagsConfig(**cfg["assets"]["normalized_tags"])
    tree_cfg = KnowledgeTreeConfig(**cfg["assets"]["knowledge_tree"])
    shards = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in sorted((ROOT / "demo" / "pool").iterdir()):
            if not f.name.endswith(".ingest.json"):
                summary = ingest_file(str(f), load_options(str(f), IngestOptions(max_record_bytes=200_000)), partition=f.name, source_file=f.name, staging_dir=tmp)
                shards.append(pl.concat([pl.read_parquet(p) for p in summary.pool_parts]).unique("row_id", keep="first", maintain_order=True))
    pool = pl.concat(shards).unique("row_id", keep="first", maintain_order=True)
    encode = EmbedderResource().encode
    print(f"\npart 3: demo pool ({pool.height} rows), curation.yaml (demo) settings")
    settings = TreeSettings(branching=tree_cfg.branching, top=tree_cfg.top, max_depth=tree_cfg.max_depth, seed=tree_cfg.seed)
    trees = {}
    for name, min_df, leaf_threshold in (("before: per-tag leaves", 1, None), ("now: min_df + concepts", tagger.min_df, norm.leaf_threshold)):
        t = time.perf_counter()
        by_id = {}
        for shard in shards:  # tagged per shard, as open_tags does (a row in two files keeps its first file's tags)
            tags = keyphrase_tags(shard["instruction"].to_list(), encode, top_n=tagger.top_n, ngram_range=(tagger.min_ngram, tagger.max_ngram), diversity=tagger.diversity, min_df=min_df)
            for row_id, row_tags in zip(shard["row_id"], tags):
                by_id.setdefault(row_id, row_tags)
        rows = pool.select("row_id", pl.Series("raw_tags", [[t["tag"] for t in by_id[r]] for r in pool["row_id"]], dtype=pl.List(pl.String)), pl.col("response").str.len_chars().alias("response_chars"), pl.int_range(pl.len()).alias("pool_order"))
        out, vocab = normalize_tags(rows, encode, norm.settings())
        if leaf_threshold is not None:
            leaves_df, _ = tree_leaves(rows, vocab, encode, leaf_threshold, norm.tree_min_rows)
            out = out.drop("tree_tags").join(leaves_df, on="row_id", how="left")
        leaves = out.select("row_id", "tree_tags").explode("tree_tags").drop_nulls().group_by("tree_tags").len().sort("tree_tags")
        nodes = build_tree(leaves["tree_tags"].to_list(), encode([x.lower() for x in leaves["tree_tags"]]), leaves["len"].to_numpy(), settings)
        raw = rows["raw_tags"].explode().drop_nulls()
        counts = raw.value_counts()
        trees[name] = {"raw tags": raw.n_unique(), "raw tags used once": int((counts["count"] == 1).sum()), **tree_quality(nodes, ground_rows(out, nodes), pool.height), "seconds": time.perf_counter() - t}
    print_quality(trees)


def part2() -> None:
    from openai_stub import stub_server, tags_json
    from resources.tagger import TaggerResource

    texts = instructions()[:2000]
    print("\npart 2: tagging throughput")
    tagger = TaggerResource()
    tagger.tag(texts[:50])  # load the model
    t = time.perf_counter()
    tagger.tag(texts[:1000])
    print(f"  keyphrase (offline, MiniLM on CPU):  {1000 / (time.perf_counter() - t):8.1f} rows/s")

    with tempfile.TemporaryDirectory() as folder:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(ROOT / "tests" / "fixtures" / "tiny_gpt2")).save_pretrained(folder)
        local = TaggerResource(backend="transformers", model=folder, max_tokens=64, batch_size=16, max_retries=0)
        local.tag(texts[:4])
        t = time.perf_counter()
        local.tag(texts[:64])
        rate = 64 / (time.perf_counter() - t)
        print(f"  transformers (GPT-2 124M, random weights, 64 new tokens, CPU): {rate:8.2f} rows/s")

    with stub_server(lambda body, attempt: (200, tags_json("Tag A", "Tag B"), 0.05)) as (_, url):
        http = TaggerResource(backend="openai", base_url=url, model="stub", max_concurrency=32)
        t = time.perf_counter()
        http.tag(texts[:2000])
        print(f"  openai client vs local stub (50 ms/answer, 32 in flight): {2000 / (time.perf_counter() - t):8.1f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tags", type=int, default=50_000)
    parser.add_argument("--skip-backends", action="store_true")
    parser.add_argument("--demo-only", action="store_true", help="only part 3: tree figures on the demo pool")
    args = parser.parse_args()
    if not args.demo_only:
        if not SHARED.is_dir():
            sys.exit(f"needs {SHARED}")
        part1(args.rows, args.tags)
        if not args.skip_backends:
            part2()
    demo_pool_figures()


if __name__ == "__main__":
    main()
