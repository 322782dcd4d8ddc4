"""Every pool and evaluation file in ../shared/data/raw loads (MANIFEST.md describes them)."""

from collections import Counter

import polars as pl

from curation_assets.methods.ingest import IngestOptions, count_records, ingest_file, is_data_file

FLAN_COT = {
    "has_header": False,
    "quote_char": None,
    "unescape_newlines": True,
    "column_map": {"instruction": "column_1", "response": "{column_3} So the answer is {column_2}."},
}
# Sidecar options a user would write for the files that are not in a standard shape.
MAPPINGS = {
    "flan_cot": FLAN_COT,
    "aqua": {"column_map": {"instruction": "{question}\n{options}", "response": "{rationale}"}},
    "bbh": {"column_map": {"instruction": "input", "response": "target"}},
    "humaneval": {"column_map": {"instruction": "prompt", "response": "canonical_solution"}},
    "mbpp": {"column_map": {"instruction": "text", "response": "code"}},
    "math_oai": {"column_map": {"instruction": "problem", "response": "solution"}},
    "svamp": {"column_map": {"instruction": "{Body} {Question}", "response": "{Answer}"}},
    "mmlu": {"column_map": {"instruction": "{question}\nA. {choice0}\nB. {choice1}\nC. {choice2}\nD. {choice3}", "response": "{answer}"}},
    # Prompts without reference answers: readable as target sets.
    "user_oriented_instructions.jsonl": {"allow_empty_response": True, "column_map": {"instruction": "instruction"}},
    "question.jsonl": {"allow_empty_response": True},
    "gpt-4.jsonl": {"allow_empty_response": True, "column_map": {"instruction": "question_id", "response": "choices"}},
}
POOL_SOURCES = {"flan_cot", "gsm8k", "alpagasus", "gpteacher", "codealpaca", "t0_p3_50k", "cherry_llm"}


def options_for(path, raw):
    parts = path.relative_to(raw).parts
    for key in (path.name, parts[-2], parts[0]):
        if key in MAPPINGS:
            return IngestOptions(**MAPPINGS[key])
    return IngestOptions()


def test_every_shared_file_loads(raw_data, tmp_path):
    files = sorted(p for p in raw_data.rglob("*") if p.is_file() and is_data_file(p))
    assert len(files) > 400
    totals = Counter()
    for i, path in enumerate(files):
        opts = options_for(path, raw_data)
        summary = ingest_file(path, opts, partition="p", source_file=path.name, staging_dir=tmp_path / str(i))
        reasons = Counter()
        for part in summary.quarantine_parts:
            reasons.update(pl.read_parquet(part)["reason"].to_list())
        assert summary.input_records == summary.pool_rows + summary.quarantined == count_records(path, opts), path
        # Only genuinely empty responses are refused; every shape is understood.
        assert set(reasons) <= {"empty_response"}, (path, reasons)
        assert summary.input_records > 0 or path.stat().st_size == 0, path
        source = path.relative_to(raw_data).parts[0]
        totals["pool" if source in POOL_SOURCES else "eval"] += summary.pool_rows
        totals["empty"] += reasons["empty_response"]
    # MANIFEST.md: 124,474 pool records plus 3,111 Cherry records (gsm8k test, 1,319, is eval);
    # 4 Alpaca, 2 Code Alpaca and 1,400 T0 records have empty responses.
    assert totals["pool"] + totals["empty"] == 124_474 + 3_111 + 1_319
    assert totals["empty"] == 4 + 2 + 1_400
