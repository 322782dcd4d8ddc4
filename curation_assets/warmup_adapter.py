"""warmup_adapter: LESS's LoRA warm-up on a seeded random share of the pool (research/targeted.md §3.1-3.2),
through the shared training module; each epoch's adapter and Adam moments are kept as safetensors."""

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.methods.lora_training import LoraSettings, conversation_of, train_lora
from curation_assets.methods.plugin import version_hash
from curation_assets.methods.tis_selection import checkpoint_weights
from curation_assets.shards import all_shards, pool_rows, shard_frames
from resources.storage import CurationStorage
from resources.target_model import TargetModelResource

VERSION = "1"


class WarmupConfig(dg.Config):
    """LESS's warm-up defaults: 5% of the pool, LoRA r 128, alpha 512, dropout 0.1, q/k/v/o for Llama
    (TIS: every linear layer otherwise), AdamW lr 2e-5, linear schedule, 3% warm-up, 4 epochs,
    effective batch 128, max length 2048."""

    share: float = Field(0.05, description="Share of the pool to warm up on (LESS: 0.05), or a row count when > 1.")
    seed: int = Field(0, description="Seed of the share's draw and of the training (TIS: 0).")
    rank: int = Field(128, description="LoRA rank (LESS: 128).")
    alpha: float = Field(512.0, description="LoRA alpha (LESS: 512).")
    dropout: float = Field(0.1, description="LoRA dropout (LESS: 0.1).")
    target_modules: list[str] | None = Field(None, description="LoRA modules; null = q/k/v/o for Llama models, all linear layers otherwise (TIS).")
    epochs: int = Field(4, description="Epochs, one checkpoint each (LESS: 4).")
    learning_rate: float = Field(2e-5, description="Peak learning rate (LESS: 2e-5).")
    schedule: str = Field("linear", description="Learning-rate schedule (LESS: linear).")
    warmup_ratio: float = Field(0.03, description="Linear warm-up share of the steps (LESS: 0.03).")
    batch_size: int = Field(128, description="Rows per optimizer step (LESS: 1 x 128).")
    micro_batch_size: int = Field(1, description="Rows per forward pass.")
    max_length: int = Field(2048, description="Truncation (LESS: 2048).")

    def settings(self) -> LoraSettings:
        return LoraSettings(rank=self.rank, alpha=self.alpha, dropout=self.dropout, target_modules=tuple(self.target_modules) if self.target_modules else "auto",
                            epochs=self.epochs, learning_rate=self.learning_rate, schedule=self.schedule, warmup_ratio=self.warmup_ratio,
                            batch_size=self.batch_size, micro_batch_size=self.micro_batch_size, max_length=self.max_length, seed=self.seed)


def warmup_share(row_ids: list[str], share: float, seed: int) -> list[int]:
    """Positions of the seeded random share (at least one row), in pool order."""
    n = len(row_ids)
    k = min(n, max(1, int(round(share * n)) if share <= 1 else int(share)))
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def _loss_plot(losses: list[dict]) -> dg.MetadataValue:
    fig, ax = ui.new_figure(6.5, 3)
    ax.plot([x["step"] for x in losses], [x["loss"] for x in losses], marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA warm-up loss")
    return ui.png_md(fig, "warm-up loss curve")


@dg.asset(
    group_name="targeted",
    kinds={"pytorch", "safetensors", "parquet"},
    pool="gpu",
    deps=all_shards("raw_pool"),
    description="LESS warm-up LoRA: one adapter and Adam state per epoch (safetensors), with the learning-rate weights of the checkpoints.",
    metadata={"descriptions": {
        "epoch": "Warm-up epoch the checkpoint ends (1-based).",
        "step": "Optimizer step at the checkpoint.",
        "adapter_dir": "Folder of the LoRA adapter (adapter_model.safetensors, adapter_config.json).",
        "optimizer_path": "The Adam state (optimizer.safetensors) that preconditions pool gradients.",
        "mean_learning_rate": "Mean logged learning rate over the epoch.",
        "weight": "The checkpoint's weight in the similarity: its mean learning rate, normalized to sum to 1 (LESS).",
        "mean_loss": "Mean training loss over the epoch.",
        "key": "Hash of the model, rows and settings: the folder these files live in.",
    }},
)
def warmup_adapter(context: dg.AssetExecutionContext, config: WarmupConfig, target_model: TargetModelResource, storage: CurationStorage) -> dg.MaterializeResult:
    stored = shard_frames(context, storage, "raw_pool")  # None when no raw_pool shard is materialized
    pool = pool_rows(stored).select("row_id", "messages", "system_prompt").collect() if stored is not None else None
    if pool is None or pool.is_empty():
        raise dg.Failure("the pool is empty: land and materialize raw_pool first")
    picked = warmup_share(pool["row_id"].to_list(), config.share, config.seed)
    rows = pool[picked]
    settings = config.settings()
    key = version_hash(VERSION, target_model.identity(), settings.identity(), rows["row_id"].to_list())
    out_dir = storage.root / "warmup_adapter" / key
    tokenizer, model = target_model.load()
    conversations = [conversation_of(m, s) for m, s in zip(rows["messages"].to_list(), rows["system_prompt"].to_list())]
    context.log.info(f"warm-up on {len(conversations)} of {pool.height} rows, {settings.epochs} epochs, on {target_model.resolved_device()}")
    try:
        result = train_lora(model, tokenizer, conversations, settings, out_dir, model_name=target_model.model, save_optimizer=True, device=target_model.resolved_device())
    except ValueError as exc:
        raise dg.Failure(f"warm-up: {exc}") from exc
    weights = checkpoint_weights(result.losses, settings.epochs)
    if len(weights) != len(result.checkpoints):
        raise dg.Failure(f"{len(result.checkpoints)} checkpoints but learning rates logged for {len(weights)} epochs")
    table = pl.DataFrame({
        "epoch": [c.epoch for c in result.checkpoints],
        "step": [c.step for c in result.checkpoints],
        "adapter_dir": [c.adapter_dir for c in result.checkpoints],
        "optimizer_path": [c.optimizer_path for c in result.checkpoints],
        "mean_learning_rate": [c.mean_learning_rate for c in result.checkpoints],
        "weight": weights,
        "mean_loss": [c.mean_loss for c in result.checkpoints],
        "key": [key] * len(result.checkpoints),
    })
    return dg.MaterializeResult(value=table, metadata={
        "dagster/row_count": table.height,
        "checkpoints": ui.table(table.drop("adapter_dir", "optimizer_path", "key")),
        "loss_curve": _loss_plot(result.losses),
        "warmup_rows": f"{result.n_rows:,} of {pool.height:,} pool rows ({result.n_dropped} dropped: no assistant token within max_length)",
        "trainable_parameters": result.trainable_parameters,
        "target_modules": str(result.target_modules),
        "device": result.device,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "model": dg.MetadataValue.json(target_model.identity()),
        "config": dg.MetadataValue.json(config.model_dump()),
        "folder": dg.MetadataValue.path(str(out_dir)),
    })
