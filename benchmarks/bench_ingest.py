"""Ingest 1,000,000 Alpaca-shaped rows as one file and as 100 files; print rows/s and peak memory.

Rows are real Alpaca, Dolly, Code Alpaca and GPTeacher records from ../shared/data, cycled to a
million and made distinct by a numbered suffix on the instruction. Each measurement runs in a fresh
process so that its peak resident memory (ru_maxrss) is its own; "over baseline" subtracts the
memory of that process after imports, before any work.

Side by side: `raw_pool` (chunked parsing, Parquet parts, Polars' streaming engine for duplicate
marking and writing) against a naive eager ingest (the whole file parsed into Python dicts, then one
DataFrame), the usual approach of one-off scripts.

    python benchmarks/bench_ingest.py [--rows 1000000] [--files 100]
"""

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "raw"
SOURCES = [
    "alpagasus/random_9k.json",
    "alpagasus/dolly_3k.json",
    "codealpaca/code_alpaca_2k.json",
    "gpteacher/codegen-instruct.json",
    "gpteacher/toolformer-dedupe-only-dataset.json",
    "gpteacher/roleplay-simple-deduped-roleplay-instruct.json",
]


def build_pool(folder: Path, rows: int, files: int) -> list[Path]:
    base = []
    for name in SOURCES:
        for r in json.loads((SHARED / name).read_text()):
            out = r.get("output", r.get("response", ""))
            if out.strip():
                base.append({"instruction": r["instruction"], "input": r.get("input", ""), "output": out})
    folder.mkdir(parents=True, exist_ok=True)
    per_file = rows // files
    paths = []
    for f in range(files):
        path = folder / f"alpaca_{f:03d}.jsonl"
        with open(path, "w") as fh:
            for i in range(f * per_file, (f + 1) * per_file):
                r = base[i % len(base)]
                fh.write(json.dumps({**r, "instruction": f"{r['instruction']} (#{i})"}) + "\n")
        paths.append(path)
    return paths


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ours(paths: list[str], home: str, queue) -> None:
    import dagster as dg

    from curation_assets.definitions import build_resources
    from curation_assets.landing import land_file
    from curation_assets.raw_pool import raw_pool

    resources = build_resources(home)
    base = _rss_mb()
    t0 = time.perf_counter()
    keys = [land_file(Path(p), resources["storage"].landed, Path(p).name).partition for p in paths]
    t_land = time.perf_counter() - t0
    rows = 0
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("pool_shards", keys)
        t1 = time.perf_counter()
        for key in keys:
            result = dg.materialize(
                [raw_pool], resources=resources, partition_key=key, instance=instance,
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            )
            rows += result.asset_materializations_for_node("raw_pool")[0].metadata["dagster/row_count"].value
        t_ingest = time.perf_counter() - t1
    queue.put({"rows": rows, "land_s": t_land, "ingest_s": t_ingest, "peak_mb": _rss_mb(), "base_mb": base})


def _naive(paths: list[str], out: str, queue) -> None:
    import hashlib

    import orjson
    import polars as pl

    base = _rss_mb()
    t0 = time.perf_counter()
    rows = 0
    for i, p in enumerate(paths):
        records = [orjson.loads(line) for line in Path(p).read_bytes().splitlines() if line.strip()]
        for r in records:
            r["messages"] = [{"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")},
                             {"role": "assistant", "content": r["output"]}]
            r["row_id"] = hashlib.blake2b(orjson.dumps(r["messages"]), digest_size=16).hexdigest()
        df = pl.DataFrame(records)
        df.write_parquet(Path(out) / f"{i}.parquet")
        rows += df.height
        del records, df
    queue.put({"rows": rows, "land_s": 0.0, "ingest_s": time.perf_counter() - t0, "peak_mb": _rss_mb(), "base_mb": base})


def measure(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs {SHARED}")
    work = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        one = build_pool(work / "one", args.rows, 1)
        many = build_pool(work / "many", args.rows, args.files)
        size_mb = sum(p.stat().st_size for p in one) / 2**20
        print(f"data: {args.rows:,} rows, {size_mb:,.0f} MiB of JSON Lines; machine: {mp.cpu_count()} cores\n")
        print(f"{'scenario':<34}{'rows':>10}{'land s':>8}{'ingest s':>10}{'rows/s':>10}{'peak MiB':>10}{'over base':>11}{'/ data':>8}")
        results = {}
        for name, target, paths in [
            ("raw_pool, 1 file", _ours, one),
            (f"raw_pool, {args.files} files", _ours, many),
            ("naive eager, 1 file", _naive, one),
            (f"naive eager, {args.files} files", _naive, many),
        ]:
            scratch = work / f"out_{len(results)}"
            scratch.mkdir()
            r = measure(target, [str(p) for p in paths], str(scratch))
            over = r["peak_mb"] - r["base_mb"]
            results[name] = r
            print(f"{name:<34}{r['rows']:>10,}{r['land_s']:>8.1f}{r['ingest_s']:>10.1f}{r['rows'] / r['ingest_s']:>10,.0f}"
                  f"{r['peak_mb']:>10,.0f}{over:>11,.0f}{over / size_mb:>8.2f}")
            shutil.rmtree(scratch, ignore_errors=True)
        ours, naive = results["raw_pool, 1 file"], results["naive eager, 1 file"]
        print(f"\npeak memory over baseline, 1 file: raw_pool {ours['peak_mb'] - ours['base_mb']:,.0f} MiB vs naive "
              f"{naive['peak_mb'] - naive['base_mb']:,.0f} MiB (data {size_mb:,.0f} MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
