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
    from curation_assets.methods.tree import TreeSettings, build_tree, ground_rows
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
    for name, seconds in timings.items():
        print(f"  {name:<40}{seconds:>8.1f} s")
    print(f"  {'total':<40}{sum(timings.values()):>8.1f} s")
    print(f"  canonical tags {len(labels):,}; tree: {nodes.height:,} nodes, depth {nodes['depth'].max()}, "
          f"{memberships.height:,} memberships; peak RSS {rss_mb():,.0f} MiB ({rss_mb() - base:,.0f} over the start)")


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
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs {SHARED}")
    part1(args.rows, args.tags)
    if not args.skip_backends:
        part2()


if __name__ == "__main__":
    main()
