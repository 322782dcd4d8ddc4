"""Reading every format and shape, and quarantining every kind of bad record (pure method code)."""

import gzip
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from curation_assets.methods.ingest import (
    IngestOptions,
    UnreadableFileError,
    count_records,
    ingest_file,
    mark_duplicates,
    normalize_record,
    row_id_for,
)

ALPACA = [
    {"instruction": "Name a prime number.", "input": "", "output": "Seven is prime."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
    {"instruction": "Say hi.", "response": "Hi!"},
]


def run(tmp_path, path, opts=None):
    summary = ingest_file(path, opts or IngestOptions(), partition="p", source_file=path.name, staging_dir=tmp_path / "stage")
    pool = pl.concat([pl.read_parquet(p) for p in summary.pool_parts]) if summary.pool_parts else None
    quarantine = pl.concat([pl.read_parquet(p) for p in summary.quarantine_parts]) if summary.quarantine_parts else None
    return summary, pool, quarantine


def jsonl_bytes(rows):
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@pytest.mark.parametrize(
    "name,writer",
    [
        ("a.json", lambda rows: json.dumps(rows).encode()),
        ("a.jsonl", jsonl_bytes),
        ("a.jsonl.gz", lambda rows: gzip.compress(jsonl_bytes(rows))),
        ("a.jsonl.zst", lambda rows: zstandard.ZstdCompressor().compress(jsonl_bytes(rows))),
        ("a.json.gz", lambda rows: gzip.compress(json.dumps(rows).encode())),
        ("a.ndjson", jsonl_bytes),
    ],
)
def test_json_formats_give_identical_rows(tmp_path, name, writer):
    path = tmp_path / name
    path.write_bytes(writer(ALPACA))
    summary, pool, _ = run(tmp_path, path)
    assert summary.input_records == 3 and summary.pool_rows == 3 and summary.quarantined == 0
    assert pool["instruction"].to_list() == [r["instruction"] for r in ALPACA]
    assert pool["response"].to_list() == ["Seven is prime.", "chat", "Hi!"]
    assert pool["input"].to_list() == ["", "cat", ""]
    assert pool["messages"][1].to_list() == [{"role": "user", "content": "Translate to French.\ncat"}, {"role": "assistant", "content": "chat"}]
    assert pool["source_row"].to_list() == [1, 2, 3]


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_parquet(tmp_path, compression):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "output": r.get("output", r.get("response"))} for r in ALPACA]), path)
    if compression:
        data = path.read_bytes()
        path = tmp_path / ("a.parquet.gz" if compression == "gzip" else "a.parquet.zst")
        path.write_bytes(gzip.compress(data) if compression == "gzip" else zstandard.ZstdCompressor().compress(data))
        with pytest.raises(UnreadableFileError):  # Parquet compresses inside the file; outer archives are refused
            run(tmp_path, path)
        return
    summary, pool, _ = run(tmp_path, path)
    assert summary.pool_rows == 3 and pool["response"].to_list() == ["Seven is prime.", "chat", "Hi!"]


def test_parquet_conversations_column(tmp_path):
    path = tmp_path / "chat.parquet"
    rows = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    _, pool, _ = run(tmp_path, path)
    assert pool["shape"].to_list() == ["openai_messages"] and pool["response"].to_list() == ["4"]


def test_csv_and_tsv_with_column_map(tmp_path):
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('q,a,why\n"What is 2+2, roughly?",4,"adding, simply"\nCapital of France?,Paris,geography\n')
    opts = IngestOptions(column_map={"instruction": "q", "response": "{why} So the answer is {a}."})
    _, pool, _ = run(tmp_path, csv_path, opts)
    assert pool["instruction"].to_list() == ["What is 2+2, roughly?", "Capital of France?"]
    assert pool["response"].to_list() == ["adding, simply So the answer is 4.", "geography So the answer is Paris."]

    tsv_path = tmp_path / "cot.tsv"
    tsv_path.write_text('He said "hi"\\nthen left\t4\tbecause\n')  # FLAN style: no header, no quoting, literal \n
    opts = IngestOptions(has_header=False, quote_char=None, unescape_newlines=True, column_map={"instruction": "column_1", "response": "{column_3} {column_2}"})
    _, pool, _ = run(tmp_path, tsv_path, opts)
    assert pool["instruction"].to_list() == ['He said "hi"\nthen left'] and pool["response"].to_list() == ["because 4"]


def test_csv_with_known_header_needs_no_map(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("instruction,input,output\nAdd.,1 2,3\n")
    _, pool, _ = run(tmp_path, path)
    assert pool["messages"][0].to_list()[0]["content"] == "Add.\n1 2"


@pytest.mark.parametrize(
    "record,shape,n_turns,response,system",
    [
        ({"prompt": "Q?", "completion": "A.<|endoftext|>"}, "prompt_completion", 1, "A.", None),
        ({"question": "Q?", "answer": "A."}, "question_answer", 1, "A.", None),
        (
            {"conversations": [{"from": "system", "value": "Be terse."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Ciao"}]},
            "sharegpt", 2, "Ciao", "Be terse.",
        ),
        (
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]},
            "openai_messages", 1, "A", "S",
        ),
        ({"instruction": "Q2", "output": "A2", "history": [["Q1", "A1"]], "system": "S"}, "alpaca", 2, "A2", "S"),
    ],
)
def test_shapes(record, shape, n_turns, response, system):
    norm = normalize_record(record, IngestOptions())
    assert norm.shape == shape
    assert sum(m["role"] == "assistant" for m in norm.messages) == n_turns
    assert norm.response == response and norm.system == system


def test_row_id_is_a_content_hash_of_the_conversation():
    alpaca = normalize_record({"instruction": "Add.", "input": "1 2", "output": "3"}, IngestOptions())
    sharegpt = normalize_record({"conversations": [{"from": "human", "value": "Add.\n1 2"}, {"from": "gpt", "value": "3 "}]}, IngestOptions())
    openai = normalize_record({"messages": [{"role": "user", "content": "Add.\r\n1 2"}, {"role": "assistant", "content": "3"}]}, IngestOptions())
    ids = {row_id_for(n.system, n.messages) for n in (alpaca, sharegpt, openai)}
    assert len(ids) == 1
    other = normalize_record({"instruction": "Add.", "input": "1 2", "output": "4"}, IngestOptions())
    assert row_id_for(other.system, other.messages) not in ids
    with_system = normalize_record({"instruction": "Add.", "input": "1 2", "output": "3", "system": "Be exact."}, IngestOptions())
    assert row_id_for(with_system.system, with_system.messages) not in ids


def test_bad_records_are_quarantined_with_reasons(tmp_path):
    lines = [
        json.dumps(ALPACA[0]).encode(),
        b'{"instruction": "broken", ',
        json.dumps({"instruction": "no answer"}).encode(),
        json.dumps({"instruction": "typed", "output": 42}).encode(),
        json.dumps({"instruction": "empty", "output": "   "}).encode(),
        b'{"instruction": "bad \xff\xfe utf8", "output": "x"}',
        json.dumps({"instruction": "big", "output": "x" * 5000}).encode(),
        json.dumps({"foo": 1, "bar": 2}).encode(),
        json.dumps([1, 2, 3]).encode(),
        json.dumps({"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "yo"}]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "unanswered"}]}).encode(),
        json.dumps({"instruction": "", "output": "answer without question"}).encode(),
        b"",
        json.dumps(ALPACA[1]).encode(),
    ]
    path = tmp_path / "messy.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary, pool, quarantine = run(tmp_path, path, IngestOptions(max_record_bytes=2000))
    reasons = dict(zip(quarantine["source_row"].to_list(), quarantine["reason"].to_list()))
    assert reasons == {
        2: "invalid_json",
        3: "missing_field",
        4: "mistyped_field",
        5: "empty_response",
        6: "invalid_utf8",
        7: "too_large",
        8: "unknown_shape",
        9: "not_an_object",
        10: "bad_role",
        11: "ends_with_user_turn",
        12: "empty_instruction",
    }
    assert pool["source_row"].to_list() == [1, 14]  # line numbers; the blank line 13 is no record
    assert summary.input_records == 13 == count_records(path, IngestOptions())
    assert all(quarantine["detail"].str.len_chars() > 0) and quarantine["raw_preview"][0].startswith('{"instruction": "broken"')


def test_ragged_and_non_utf8_csv_rows(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"instruction,output\nok,fine\ntoo,many,fields\nbad \xff,x\n")
    summary, pool, quarantine = run(tmp_path, path)
    assert pool["instruction"].to_list() == ["ok"]
    assert quarantine["reason"].to_list() == ["ragged_row", "invalid_utf8"]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("broken.json", b'[{"instruction": "a", "output": "b"}, {"instr', "not valid JSON"),
        ("corrupt.jsonl.gz", b"this is not gzip data at all", "cannot decompress"),
        ("corrupt.jsonl.zst", b"this is not zstd data at all", "cannot decompress"),  # zstandard.ZstdError
        ("cut.jsonl.zst", zstandard.ZstdCompressor().compress(b'{"instruction": "a", "output": "b"}\n' * 500)[:40], "cannot decompress"),
        ("notes.docx", b"PK\x03\x04", "unsupported file type"),
        ("bare.json", b'{"meta": 1, "n": 2}', "records_path"),
        ("bad.parquet", b"PAR1 not really", "Parquet"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError) as err:
        run(tmp_path, path)
    assert name in str(err.value) and message in str(err.value)


def test_json_object_with_records_list_and_jsonl_named_json(tmp_path):
    bbh = tmp_path / "bbh.json"
    bbh.write_text(json.dumps({"canary": "x", "examples": [{"input": "1+1", "target": "2"}]}))
    _, pool, _ = run(tmp_path, bbh, IngestOptions(column_map={"instruction": "input", "response": "target"}))
    assert pool["response"].to_list() == ["2"]
    disguised = tmp_path / "dev.json"
    disguised.write_bytes(jsonl_bytes(ALPACA[:2]))
    summary, pool, _ = run(tmp_path, disguised)
    assert summary.pool_rows == 2


def test_target_prompts_without_responses(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_bytes(jsonl_bytes([{"question_id": 1, "turns": ["Plan a trip.", "Shorter please."]}, {"instruction": "Define entropy."}]))
    summary, pool, _ = run(tmp_path, path, IngestOptions(allow_empty_response=True))
    assert summary.pool_rows == 2 and pool["instruction"].to_list() == ["Plan a trip.", "Define entropy."]
    summary, _, quarantine = run(tmp_path, path)
    assert summary.pool_rows == 0 and set(quarantine["reason"]) == {"no_assistant_turn", "missing_field"}


def test_mark_duplicates_within_the_file():
    pool = pl.LazyFrame({"row_id": ["b", "a", "b", "c"], "source_partition": ["new"] * 4, "source_row": [1, 2, 3, 4]})
    assert mark_duplicates(pool).collect()["duplicate_of"].to_list() == [None, None, "new#1", None]
