"""`curate why`: one sample's whole story, from its source file and row to the selection decision,
read from the stored asset tables."""

import textwrap

import orjson
import polars as pl

from curation_assets.shards import with_first_copy
from resources.storage import CurationStorage, check_parquet


def _one(frame: pl.LazyFrame | None, row_id: str) -> dict | None:
    if frame is None:
        return None
    hit = frame.filter(pl.col("row_id") == row_id).head(1).collect()
    return hit.row(0, named=True) if hit.height else None


def _table(storage: CurationStorage, asset: str) -> pl.LazyFrame | None:
    path = storage.asset_file(asset)
    if not path.exists():
        return None
    check_parquet(path)
    return pl.scan_parquet(path)


def resolve_row_id(storage: CurationStorage, key: str) -> str:
    """A full row_id, a unique prefix of one, or "FILE:ROW" (a source file and record number)."""
    pool = storage.scan_partitions("raw_pool")
    if pool is None:
        raise LookupError(f"no pool under {storage.root}; run the graph first")
    if ":" in key and not key.startswith("/"):
        file, _, row = key.rpartition(":")
        hits = pool.filter((pl.col("source_file") == file) & (pl.col("source_row") == int(row))).select("row_id").collect()
    else:
        hits = pool.filter(pl.col("row_id").str.starts_with(key)).select("row_id").unique().collect()
    if hits.height == 0:
        raise LookupError(f"no row matches {key!r}")
    if hits["row_id"].n_unique() > 1:
        raise LookupError(f"{key!r} matches {hits['row_id'].n_unique()} rows; give more of the row_id")
    return hits["row_id"][0]


def story(storage: CurationStorage, key: str, width: int = 100) -> str:
    row_id = resolve_row_id(storage, key)
    pool = storage.scan_partitions("raw_pool")
    # The canonical copy is the first in pool order (shards.py), whichever shard ran first.
    copies = with_first_copy(pool.filter(pl.col("row_id") == row_id)).collect()
    first = copies.row(0, named=True)
    cut = lambda text, n=width * 3: textwrap.shorten(" ".join(str(text or "").split()), n, placeholder=" …")  # noqa: E731
    lines = [f"row {row_id}", "", "SOURCE"]
    lines.append(f"  {first['source_file']}, record {first['source_row']} (shard {first['source_partition']}, {first['source_format']}, {first['shape']})")
    for copy in copies.iter_rows(named=True):
        if copy["first_copy"]:
            lines.append(f"  duplicate copy: {copy['source_file']}, record {copy['source_row']} -> first copy {copy['first_copy']}")
    if first["system_prompt"]:
        lines.append(f"  system: {cut(first['system_prompt'])}")
    lines.append(f"  instruction: {cut(first['instruction'])}")
    if first["input"]:
        lines.append(f"  input: {cut(first['input'])}")
    lines.append(f"  response: {cut(first['response'])}")
    lines.append(f"  turns: {first['n_turns']}, characters: {first['total_chars']}")

    tags = _one(storage.scan_partitions("open_tags"), row_id)
    normalized = _one(_table(storage, "normalized_tags"), row_id)
    lines += ["", "TAGS"]
    if tags:
        lines.append(f"  open tags ({tags['status']}): " + (", ".join(t["tag"] for t in tags["tags"] or []) or tags["error"] or "none"))
    if normalized:
        lines.append(f"  canonical tags: {', '.join(normalized['canonical_tags']) or 'none (dropped by the frequency filter)'}")
        lines.append(f"  tree leaves: {', '.join(normalized.get('tree_tags') or []) or 'none'}")
        lines.append(f"  clusters: {normalized['clusters']}{' (label-set representative)' if normalized['labelset_representative'] else ''}")
    reasons = _one(_table(storage, "selection_reasons"), row_id)
    if reasons and reasons["tree_path"]:
        lines.append("  tree: " + reasons["tree_path"].replace(" | ", "\n        "))

    scores = _one(storage.scan_partitions("instance_scores"), row_id)
    lines += ["", "SCORES"]
    if reasons and reasons["scores"]:
        for s in reasons["scores"]:
            lines.append(f"  {s['name']:<18} {s['value']:.4g}  (percentile {s['percentile']:.0f} of the pool)")
    elif scores:
        from curation_assets.methods.registry import offered_scores

        for k in offered_scores():
            if k in scores and scores[k] is not None:
                lines.append(f"  {k:<18} {scores[k]:.4g}")
    else:
        lines.append("  none stored")

    lines += ["", "DECISION"]
    if reasons is None:
        lines.append("  no selection has been made yet")
    else:
        verdict = f"SELECTED, rank {reasons['rank']}" if reasons["selected"] else "NOT SELECTED"
        lines.append(f"  {verdict} by strategy '{reasons['strategy']}' ({reasons['budget_rule']})")
        lines.append(f"  {reasons['reason']}")
        lines += _targeted_lines(storage, reasons, cut, width)
        if reasons["kl_contribution"] is not None:
            lines.append(f"  KL alignment improvement when picked: {reasons['kl_contribution']:.4g}")
        if reasons["nearest_selected"]:
            near = _one(pool.filter(pl.col("duplicate_of").is_null()), reasons["nearest_selected"])
            lines.append(f"  nearest {'earlier ' if reasons['selected'] else ''}selected row: {reasons['nearest_selected']} (cosine {reasons['nearest_similarity']:.3f})")
            if near:
                lines.append(f"    {cut(near['instruction'], width)}")
    return "\n".join(lines)


def _targeted_lines(storage: CurationStorage, reasons: dict, cut, width: int) -> list[str]:
    """For a targeted strategy: the query (and task) that claimed the row, or its nearest query."""
    query = reasons.get("target_query")
    nearest = reasons.get("nearest_query")
    if query is None and nearest is None:
        return []
    queries = _table(storage, "query_set")
    lines = ["", "TARGETED", f"  representation: {reasons.get('representation')}"]
    if query is not None:
        lines.append(f"  claimed by query {query} ({reasons.get('target_task')}) in round/rank {reasons.get('target_round')}, similarity {reasons.get('target_similarity'):.4f}")
    if nearest is not None:
        lines.append(f"  nearest query: {nearest}, similarity {reasons.get('nearest_query_similarity'):.4f} (every other query is farther)")
    shown = query if query is not None else nearest
    hit = queries.filter(pl.col("query_id") == shown).collect() if queries is not None else None
    if hit is not None and hit.height:
        lines.append(f"    query {shown} [{hit['task'][0]}]: {cut(hit['prompt'][0], width)}")
    return lines


def story_json(storage: CurationStorage, key: str) -> str:
    row_id = resolve_row_id(storage, key)
    out = {"row_id": row_id}
    for name, frame in (("pool", storage.scan_partitions("raw_pool")), ("open_tags", storage.scan_partitions("open_tags")),
                        ("normalized_tags", _table(storage, "normalized_tags")), ("instance_scores", storage.scan_partitions("instance_scores")),
                        ("selection", _table(storage, "selection_reasons"))):
        out[name] = _one(frame, row_id)
    return orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=str).decode()
