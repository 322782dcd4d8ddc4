"""Builds the similarity a targeted strategy reads (methods/targeted.py) from stored features: the
gradient store (LESS), RDS+ of the target model, the embedder, or BM25, plus the per-task UI plots."""

import math
from pathlib import Path

import numpy as np
import polars as pl

from curation_assets import ui
from curation_assets.gradient_features import pool_feature_files, query_features
from curation_assets.methods import representations as rep
from curation_assets.methods.lora_training import conversation_of, encode_conversation, encode_prompt_completion
from curation_assets.methods.similarity_search import FaissSimilarity
from curation_assets.methods.plugin import version_hash
from curation_assets.methods.targeted import TargetedInputs
from curation_assets.rowwise import cached_encode, compute_missing
from resources.storage import CurationStorage

CHUNK_BYTES = 256 << 20  # float32 pool block read at a time


class GatheredFeatures:
    """Rows of one checkpoint's features for eligible candidates, read from per-shard memory-mapped
    fp16 files on demand (fancy indexing returns float32)."""

    def __init__(self, arrays: list[np.ndarray], which: np.ndarray, position: np.ndarray):
        self.arrays, self.which, self.position = arrays, which, position
        self.dim = arrays[0].shape[1] if arrays else 0

    def __len__(self):
        return len(self.which)

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        for a in np.unique(self.which[rows]):
            hit = self.which[rows] == a
            out[hit] = self.arrays[a][self.position[rows[hit]]]
        return out


def _joined_chunks(features: list, weights: list[float]):
    """Pool chunks of [sqrt(w_1) x_1, ..., sqrt(w_T) x_T]: their inner products are sum_t w_t <q_t, x_t>."""
    n, dim = len(features[0]), sum(f.dim for f in features)
    rows = max(1, CHUNK_BYTES // (4 * dim))

    def chunks():
        for start in range(0, n, rows):
            sel = slice(start, min(n, start + rows))
            yield start, np.concatenate([math.sqrt(w) * f[sel] for f, w in zip(features, weights)], axis=1)

    return chunks


def less_inputs(context, storage, rows: pl.DataFrame, queries: pl.DataFrame, warmup: pl.DataFrame, target_model) -> TargetedInputs:
    from curation_assets.methods.tis_selection import weighted_neighbour_sims

    table, files = pool_feature_files(storage, warmup, context.instance.get_dynamic_partitions("pool_shards"))
    if not files:
        raise ValueError("no gradient_store partition is stored: materialize gradient_store for the pool's shards")
    parts = sorted(files)
    folders = {Path(files[p][0]).parent.parent for p in parts}
    if len(folders) > 1:
        raise ValueError("gradient_store partitions were computed under different settings or warm-ups: rematerialize the stale ones")
    located = rows.select("row_id").with_row_index("pos").join(
        table.filter(pl.col("position") >= 0).unique("row_id", keep="first"), on="row_id", how="left", maintain_order="left")
    ok = located["position"].is_not_null().to_numpy()
    eligible = np.flatnonzero(ok)
    which = located["partition"].to_numpy()[ok]
    part_index = {p: i for i, p in enumerate(parts)}
    which_idx = np.array([part_index[w] for w in which], dtype=np.int64)
    position = located["position"].to_numpy()[ok].astype(np.int64)
    weights = warmup["weight"].to_list()
    per_ckpt = [GatheredFeatures([np.load(files[p][t], mmap_mode="r") for p in parts], which_idx, position) for t in range(warmup.height)]
    q = query_features(folders.pop(), target_model, warmup, queries, context.log.info)
    joined_q = np.concatenate([math.sqrt(w) * x for x, w in zip(q, weights)], axis=1)
    missing = {int(i): "not in the gradient store (no assistant token within max_length, or its shard not computed)" for i in np.flatnonzero(~ok)}
    desc = f"less ({warmup.height} checkpoints, LR weights {'/'.join(f'{w:.2f}' for w in weights)})"
    return TargetedInputs(FaissSimilarity(joined_q, _joined_chunks(per_ckpt, weights), len(eligible)), eligible, queries["query_id"].to_numpy(),
                          queries["task"].to_list(), desc, weighted_neighbour_sims(per_ckpt, weights), missing)


def _dense_inputs(pool_vectors: np.ndarray, query_vectors: np.ndarray, queries: pl.DataFrame, desc: str) -> TargetedInputs:
    from curation_assets.methods.similarity_search import array_chunks
    from curation_assets.methods.tis_selection import weighted_neighbour_sims

    return TargetedInputs(FaissSimilarity(query_vectors, array_chunks(pool_vectors), len(pool_vectors)), np.arange(len(pool_vectors)),
                          queries["query_id"].to_numpy(), queries["task"].to_list(), desc, weighted_neighbour_sims([pool_vectors], [1.0]))


def rds_inputs(storage, rows: pl.DataFrame, queries: pl.DataFrame, target_model, max_length: int = 2048) -> TargetedInputs:
    tokenizer, model = target_model.load()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    dim = model.config.hidden_size

    def embed(chunk: pl.DataFrame) -> pl.DataFrame:
        enc = [encode_conversation(tokenizer, conversation_of(m, s), max_length) for m, s in zip(chunk["messages"].to_list(), chunk["system_prompt"].to_list())]
        vectors = rep.rds_embeddings(model, enc, pad_id=pad) if enc else np.zeros((0, dim), dtype=np.float32)
        return pl.DataFrame({"row_id": chunk["row_id"], "vector": pl.Series(vectors, dtype=pl.Array(pl.Float32, dim))})

    cache = storage.row_cache("rds", version_hash(rep.VERSION, target_model.identity(), max_length))
    vectors, _ = compute_missing(rows.select("row_id", "messages", "system_prompt"), cache, embed, chunk_rows=2048)
    pool = vectors["vector"].to_numpy().astype(np.float32)
    enc = [encode_prompt_completion(tokenizer, p, a, max_length) for p, a in zip(queries["prompt"], queries["answer"])]
    return _dense_inputs(pool, rep.rds_embeddings(model, enc, pad_id=pad), queries, "rds (weighted-mean last hidden state of the target model)")


def embed_inputs(storage, rows: pl.DataFrame, queries: pl.DataFrame, embedder) -> TargetedInputs:
    texts = [rep.embed_candidate_text(conversation_of(m, s)) for m, s in zip(rows["messages"].to_list(), rows["system_prompt"].to_list())]
    cache = storage.row_cache("embeddings", embedder.version())
    pool = cached_encode(texts, embedder.encode, cache)
    q = embedder.encode([rep.embed_query_text(p, a) for p, a in zip(queries["prompt"], queries["answer"])])
    return _dense_inputs(pool, q, queries, f"embed ({embedder.model})")


def bm25_inputs(rows: pl.DataFrame, queries: pl.DataFrame) -> TargetedInputs:
    texts = [rep.embed_candidate_text(conversation_of(m, s)) for m, s in zip(rows["messages"].to_list(), rows["system_prompt"].to_list())]
    source = rep.BM25Similarity(texts, [f"{p} {a}" for p, a in zip(queries["prompt"], queries["answer"])])
    return TargetedInputs(source, np.arange(len(texts)), queries["query_id"].to_numpy(), queries["task"].to_list(), "bm25 (min-max per query)")


def provider(context, storage: CurationStorage, rows: pl.DataFrame, embedder, target_model):
    """Candidates.targeted for `rows` (the candidates in pool order): representation -> TargetedInputs,
    reading query_set (and, for less, warmup_adapter and the gradient store) when a strategy asks."""

    def inputs(representation: str) -> TargetedInputs:
        queries_path = storage.asset_file("query_set")
        if not queries_path.exists():
            raise ValueError("targeted selection needs query_set: materialize it first")
        queries = pl.read_parquet(queries_path)
        if representation == "less":
            warmup_path = storage.asset_file("warmup_adapter")
            if not warmup_path.exists():
                raise ValueError("representation less needs warmup_adapter and gradient_store: materialize them first")
            return less_inputs(context, storage, rows, queries, pl.read_parquet(warmup_path), target_model)
        if representation == "rds":
            return rds_inputs(storage, rows, queries, target_model)
        if representation == "embed":
            return embed_inputs(storage, rows, queries, embedder)
        if representation == "bm25":
            return bm25_inputs(rows, queries)
        raise ValueError(f"unknown representation {representation!r}")

    return inputs


def task_metadata(reasons: pl.DataFrame) -> dict:
    """Per task: the nearest-query similarity of the pool against the subset's; the subset's split across tasks."""
    split = reasons.filter(pl.col("selected")).group_by("target_task").len().sort("len", descending=True)
    meta = {
        "subset_by_task": ui.table(split.rename({"target_task": "task", "len": "rows"})),
        "subset_split_plot": ui.bar_chart([str(t) for t in split["target_task"]], split["len"].to_list(), "Subset rows claimed per task", "rows"),
    }
    tasks = sorted(reasons["nearest_task"].drop_nulls().unique().to_list())
    for task in tasks[:12]:
        near = reasons.filter(pl.col("nearest_task") == task)
        series = {"pool": near["nearest_query_similarity"].drop_nulls().to_numpy(), "subset": near.filter(pl.col("selected"))["nearest_query_similarity"].drop_nulls().to_numpy()}
        meta[f"similarity_{task}"] = ui.histogram(series, f"{task}: similarity to the nearest query, pool vs subset", "similarity")
    return meta
