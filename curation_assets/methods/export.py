"""Write a subset in the formats training frameworks read (TRL, LLaMA-Factory, Axolotl).

- alpaca: JSON array of {instruction, input, output[, system][, history]}; earlier turns of a
  multi-turn row go to `history` as [prompt, response] pairs (LLaMA-Factory's Alpaca format).
- sharegpt: JSON array of {conversations: [{from: human|gpt, value}][, system]} (LLaMA-Factory,
  Axolotl, FastChat).
- openai: JSON Lines of {messages: [{role, content}]}, the system prompt first (TRL's SFTTrainer).
- parquet: the subset table itself.
Every record carries `id` = row_id, so a trained-on sample traces back to its source row.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import polars as pl

from curation_assets.methods.fileio import atomic_path

FORMATS = {"alpaca": "alpaca.json", "sharegpt": "sharegpt.json", "openai": "openai_messages.jsonl", "parquet": "subset.parquet"}
ROLE_TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}


def _turns(row: dict) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def alpaca_record(row: dict) -> dict:
    turns = _turns(row)
    last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
    history, pending = [], None
    for t in turns[:last_user]:
        if t["role"] == "user":
            pending = t["content"]
        elif t["role"] == "assistant" and pending is not None:
            history.append([pending, t["content"]])
            pending = None
    single = len(history) == 0 and last_user == 0
    record = {
        "id": row["row_id"],
        "instruction": row["instruction"] if single else turns[last_user]["content"],
        "input": (row.get("input") or "") if single else "",
        "output": row["response"],
    }
    if row.get("system_prompt"):
        record["system"] = row["system_prompt"]
    if history:
        record["history"] = history
    return record


def sharegpt_record(row: dict) -> dict:
    record = {"id": row["row_id"], "conversations": [{"from": ROLE_TO_SHAREGPT[t["role"]], "value": t["content"]} for t in _turns(row)]}
    if row.get("system_prompt"):
        record["system"] = row["system_prompt"]
    return record


def openai_record(row: dict) -> dict:
    system = [{"role": "system", "content": row["system_prompt"]}] if row.get("system_prompt") else []
    return {"id": row["row_id"], "messages": system + _turns(row)}


def export_subset(subset: pl.DataFrame, folder: str | Path, formats: list[str] | None = None) -> dict[str, Path]:
    """Write `subset` (selected_subset's table) into `folder`; returns format -> file path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = subset.sort("rank").to_dicts() if "rank" in subset.columns else subset.to_dicts()
    written = {}
    for fmt in formats or list(FORMATS):
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; choose from {sorted(FORMATS)}")
        path = folder / FORMATS[fmt]
        with atomic_path(path) as tmp:  # a trainer reading the folder never sees half a file
            if fmt == "parquet":
                subset.write_parquet(tmp, compression="zstd")
            elif fmt == "openai":
                tmp.write_bytes(b"".join(orjson.dumps(openai_record(r)) + b"\n" for r in rows))
            else:
                build = alpaca_record if fmt == "alpaca" else sharegpt_record
                tmp.write_bytes(orjson.dumps([build(r) for r in rows], option=orjson.OPT_INDENT_2))
        written[fmt] = path
    return written
