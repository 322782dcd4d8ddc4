"""LESS gradient features on disk (research/targeted.md §3.1): the settings that decide them, the
folder they live in (one per warm-up and settings, so shards computed apart share the projection),
per-checkpoint feature computation, the query set's features, and the stored shards' files.
Shared by the gradient_store asset and the targeted strategies' inputs (targeted_inputs.py)."""

import json
import os
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.methods import less_features as less
from curation_assets.methods.fileio import temporary_name
from curation_assets.methods.lora_training import adapter_applied, encode_prompt_completion, load_adam_state
from curation_assets.methods.plugin import version_hash
from resources.storage import CurationStorage
from resources.target_model import TargetModelResource

TABLE_SCHEMA = {"row_id": pl.String, "position": pl.Int64, "scored_tokens": pl.Int32, "note": pl.String}


class GradientStoreConfig(dg.Config):
    """LESS's settings: 8192 dims, seed 0, max length 2048; eval mode (LESS) by default."""

    proj_dim: int = Field(8192, description="Projection dimension (LESS/TIS: 8192).")
    seed: int = Field(0, description="Projector seed (LESS/TIS: 0); every shard and checkpoint uses the same matrix.")
    max_length: int = Field(2048, description="Truncation (LESS: 2048).")
    dropout: bool = Field(False, description="LoRA dropout on while taking gradients (TIS: model.train()); off = LESS's eval mode, deterministic.")
    max_tokens: int = Field(4096, description="Padded tokens per vectorized gradient batch.")
    max_rows: int = Field(64, description="Rows per vectorized gradient batch.")
    buffer_rows: int = Field(256, description="Full gradients buffered per projection (the random matrix is drawn once per buffer).")


def store_settings(cfg: GradientStoreConfig) -> dict:
    return {k: v for k, v in cfg.model_dump().items() if k not in ("max_tokens", "max_rows", "buffer_rows")}


def store_folder(storage: CurationStorage, warmup: pl.DataFrame, settings: dict) -> Path:
    """One folder per (warm-up, feature settings): shards and query features computed under the same
    key share the projection."""
    return storage.root / "gradient_store" / version_hash(less.VERSION, warmup["key"][0], settings)


def save_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)  # readers never see a half-written file
    finally:
        tmp.unlink(missing_ok=True)


def checkpoint_features(target_model: TargetModelResource, warmup: pl.DataFrame, encoded: list, cfg: GradientStoreConfig, *, adam: bool, log) -> list[np.ndarray]:
    """Normalized projected features of `encoded` at each warm-up checkpoint (Adam for pool rows, SGD for queries)."""
    tokenizer, model = target_model.load(attn_implementation="eager")  # vmap has batching rules for eager attention only
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out = []
    for ckpt in warmup.iter_rows(named=True):
        with adapter_applied(model, ckpt["adapter_dir"]) as tuned:
            names = less.lora_parameter_names(tuned)
            dim = sum(p.numel() for n, p in tuned.named_parameters() if n in set(names))
            moments = None
            if adam:
                if not ckpt["optimizer_path"] or not Path(ckpt["optimizer_path"]).exists():
                    raise dg.Failure(f"warm-up epoch {ckpt['epoch']} has no Adam state ({ckpt['optimizer_path']}); rematerialize warmup_adapter")
                moments = less.flat_moments(load_adam_state(ckpt["optimizer_path"]), names, next(tuned.parameters()).device)
            projector = less.RademacherProjector(dim, cfg.proj_dim, seed=cfg.seed, device=next(tuned.parameters()).device)
            out.append(less.gradient_features(tuned, encoded, projector, pad_id=pad, moments=moments, dropout=cfg.dropout,
                                              max_tokens=cfg.max_tokens, max_rows=cfg.max_rows, buffer_rows=cfg.buffer_rows,
                                              log=lambda m, e=ckpt["epoch"]: log(f"epoch {e}: {m}")))
    return out


def query_features(folder: Path, target_model: TargetModelResource, warmup: pl.DataFrame, queries: pl.DataFrame, log) -> list[np.ndarray]:
    """SGD features of the query set at each checkpoint under the settings of the gradient store in
    `folder` (so queries and pool share the projection), cached there by the queries' content."""
    settings = json.loads((folder / "settings.json").read_text())
    if settings.pop("warmup_key") != warmup["key"][0]:
        raise ValueError("the gradient store was computed with another warm-up adapter: rematerialize gradient_store")
    cfg = GradientStoreConfig(**settings)
    qdir = folder / f"queries-{version_hash(queries['prompt'].to_list(), queries['answer'].to_list())}"
    files = [qdir / f"epoch-{e}.npy" for e in warmup["epoch"]]
    if not all(f.exists() for f in files):
        tokenizer, _ = target_model.load()
        encoded = [encode_prompt_completion(tokenizer, p, a, cfg.max_length) for p, a in zip(queries["prompt"], queries["answer"])]
        empty = [i for i, e in enumerate(encoded) if less.scored_tokens(e) == 0]
        if empty:
            raise ValueError(f"{len(empty)} queries have no answer token within max_length {cfg.max_length} (query_id {queries['query_id'][empty[0]]})")
        for f, x in zip(files, checkpoint_features(target_model, warmup, encoded, cfg, adam=False, log=log)):
            save_array(f, x.astype(np.float16))
    return [np.load(f).astype(np.float32) for f in files]


def pool_feature_files(storage: CurationStorage, warmup: pl.DataFrame, partitions: list[str]) -> tuple[pl.DataFrame, dict[str, list[Path]]]:
    """The stored tables of `partitions` (row_id, position, partition) and each partition's array files."""
    tables, files = [], {}
    for part in partitions:
        path = storage.asset_file("gradient_store", part)
        if not path.exists():
            continue
        t = pl.read_parquet(path)
        folder = Path(t["folder"][0]) if t.height else None
        if folder is None:
            continue
        files[part] = [folder / f"epoch-{e}.npy" for e in warmup["epoch"]]
        tables.append(t.select("row_id", "position").with_columns(pl.lit(part).alias("partition")))
    table = pl.concat(tables) if tables else pl.DataFrame(schema={"row_id": pl.String, "position": pl.Int64, "partition": pl.String})
    return table, files
