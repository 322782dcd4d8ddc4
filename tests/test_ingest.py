"""methods/ingest.py: reading every format and shape, and quarantining every kind of bad record;
hostile input (deeply nested records, control characters) and a property-based fuzz of every reader
and the normalizer (no crash; every record ends in the pool or in quarantine, once)."""

import csv
import gzip
import io
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation_assets.methods.ingest import (
    IngestOptions,
    RecordError,
    UnreadableFileError,
    count_records,
    finish_pool,
    ingest_file,
    mark_duplicates,
    nesting_depth_exceeds,
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


# --------------------------------------------------------------------------- hostile input


GOOD = {"instruction": "Name a prime number.", "output": "Seven."}


def deep(levels: int):
    value: object = "bottom"
    for _ in range(levels):
        value = [value]
    return {"instruction": "deep", "output": "x", "payload": value}


def deep_text(levels: int) -> str:
    """The JSON text of a record nesting `levels` lists (built as text: no recursion anywhere)."""
    return '{"instruction": "deep", "output": "x", "payload": ' + "[" * levels + '"bottom"' + "]" * levels + "}"


def ingest(tmp_path, path, opts=None):
    summary = ingest_file(path, opts or IngestOptions(), partition="p", source_file=path.name, staging_dir=tmp_path / "stage")
    pool = pl.concat([pl.read_parquet(p) for p in summary.pool_parts]) if summary.pool_parts else pl.DataFrame()
    quarantine = pl.concat([pl.read_parquet(p) for p in summary.quarantine_parts]) if summary.quarantine_parts else pl.DataFrame()
    return summary, pool, quarantine


@pytest.mark.parametrize(
    "name,text",
    [
        ("array.json", "[" + json.dumps(GOOD) + ", " + deep_text(10_000) + ", " + json.dumps(GOOD | {"output": "Eleven."}) + "]"),
        ("object.json", '{"data": [' + json.dumps(GOOD) + ", " + deep_text(10_000) + ", " + json.dumps(GOOD | {"output": "Eleven."}) + "]}"),
        ("lines.jsonl", json.dumps(GOOD) + "\n" + deep_text(10_000) + "\n" + json.dumps(GOOD | {"output": "Eleven."}) + "\n"),
        ("lines.jsonl.gz", json.dumps(GOOD) + "\n" + deep_text(200) + "\n" + json.dumps(GOOD | {"output": "Eleven."}) + "\n"),
    ],
)
def test_a_deep_record_is_quarantined_too_deep_and_the_rest_ingests(tmp_path, name, text):
    path = tmp_path / name
    data = text.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    summary, pool, quarantine = ingest(tmp_path, path)
    assert summary.input_records == 3 == count_records(path, IngestOptions())
    assert pool["source_row"].to_list() == [1, 3]
    assert quarantine["reason"].to_list() == ["too_deep"] and quarantine["source_row"].to_list() == [2]
    assert "64 levels" in quarantine["detail"][0]


def test_depth_bound_is_a_setting(tmp_path):
    assert not nesting_depth_exceeds(deep(10), 64)
    assert nesting_depth_exceeds(deep(10), 5)
    assert nesting_depth_exceeds(deep(100_000), 64)  # iterative: no RecursionError
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(deep(10)) + "\n" + json.dumps(GOOD) + "\n")
    assert ingest(tmp_path, path)[0].quarantined == 0
    summary, _, quarantine = ingest(tmp_path, path, IngestOptions(max_depth=5))
    assert summary.pool_rows == 1 and quarantine["reason"].to_list() == ["too_deep"]


def test_a_deep_parquet_record_is_quarantined(tmp_path):
    # pyarrow reads schemas up to 100 levels (a list is 2-3 of them); the bound is set lower here.
    levels = 20
    payload_type: pa.DataType = pa.string()
    for _ in range(levels):
        payload_type = pa.list_(payload_type)
    payloads = [deep(levels)["payload"], None]
    table = pa.table(
        {"instruction": ["deep", "flat"], "output": ["x", "y"], "payload": pa.array(payloads, type=payload_type)}
    )
    path = tmp_path / "deep.parquet"
    pq.write_table(table, path)
    summary, pool, quarantine = ingest(tmp_path, path, IngestOptions(max_depth=10))
    assert (summary.pool_rows, summary.quarantined) == (1, 1)
    assert quarantine["reason"].to_list() == ["too_deep"] and pool["instruction"].to_list() == ["flat"]


# --------------------------------------------------------------------------- control characters


def test_control_characters_are_stripped_from_all_text(tmp_path):
    path = tmp_path / "cells.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "input", "output", "system"])
        w.writerow(["Add\x00 two\x1b[31m numbers.", "1\x07 and 2", "Three.\x00\x7f", "Be\x85 brief."])
        w.writerow(["Tabs\tand\nnewlines stay.", "", "Yes\r\nthey do.", ""])
        w.writerow(["Only debris here", "", "\x00\x01\x02", ""])
    summary, pool, quarantine = ingest(tmp_path, path)
    first = pool.row(0, named=True)
    assert first["instruction"] == "Add two[31m numbers."
    assert first["input"] == "1 and 2" and first["response"] == "Three." and first["system_prompt"] == "Be brief."
    assert first["messages"][0]["content"] == "Add two[31m numbers.\n1 and 2"
    # Identity follows the stored (clean) text.
    assert first["row_id"] == row_id_for("Be brief.", [{"role": "user", "content": "Add two[31m numbers.\n1 and 2"}, {"role": "assistant", "content": "Three."}])
    assert pool.row(1, named=True)["response"] == "Yes\r\nthey do."
    # A response made only of control characters is empty once they are gone.
    assert quarantine["reason"].to_list() == ["empty_response"]
    for column in ("instruction", "input", "response", "system_prompt"):
        assert not pool[column].fill_null("").str.contains("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]").any()


def test_lone_surrogate_is_quarantined_invalid_utf8():
    with pytest.raises(RecordError) as err:
        normalize_record({"instruction": "bad \ud800 text", "output": "ok"}, IngestOptions())
    assert err.value.code == "invalid_utf8"


# --------------------------------------------------------------------------- fuzz


TEXT = st.text(alphabet=st.characters(codec="utf-8", categories=None), max_size=30) | st.sampled_from(
    ["", " ", "\x00", "ok", "<|endoftext|>", "\x1b[0m", "\u2028", "\ufeff", "user", "gpt"]
)
SCALAR = st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False, allow_infinity=False) | TEXT
JSON_VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)
TURN = st.fixed_dictionaries({}, optional={"role": TEXT | st.sampled_from(["user", "assistant", "system", "tool"]), "content": TEXT | SCALAR, "from": st.sampled_from(["human", "gpt", "system", "bot"]), "value": TEXT})
RECORD = st.one_of(
    st.fixed_dictionaries({"instruction": TEXT}, optional={"input": TEXT | SCALAR, "output": TEXT | SCALAR, "response": TEXT, "system": TEXT | SCALAR, "history": JSON_VALUE}),
    st.fixed_dictionaries({"prompt": TEXT | SCALAR}, optional={"completion": TEXT | SCALAR}),
    st.fixed_dictionaries({"question": TEXT}, optional={"answer": TEXT | SCALAR}),
    st.fixed_dictionaries({"messages": st.lists(TURN, max_size=4) | JSON_VALUE}),
    st.fixed_dictionaries({"conversations": st.lists(TURN, max_size=4)}),
    st.fixed_dictionaries({"turns": JSON_VALUE}),
    st.dictionaries(TEXT, JSON_VALUE, max_size=4),
    JSON_VALUE,
)
class Deep(int):
    """A record nesting this many levels, written as text (json.dumps would recurse)."""


DEEP = st.integers(60, 3000).map(Deep)


def _json_text(record) -> str:
    return deep_text(record) if isinstance(record, Deep) else json.dumps(record)


def _written_json(records) -> bytes:
    return ("[" + ", ".join(map(_json_text, records)) + "]").encode()


def _written_jsonl(records) -> bytes:
    return "".join(_json_text(r) + "\n" for r in records).encode()


def _compress(data: bytes, compression: str) -> bytes:
    return {"": lambda d: d, ".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress}[compression](data)


def _check_accounts(tmp_path, path, expected: int, opts=None):
    """No crash; input = pool + quarantine, each source row once; duplicates are flagged, not lost."""
    opts = opts or IngestOptions(max_record_bytes=20_000)
    summary, pool, quarantine = ingest(tmp_path, path, opts)
    assert summary.input_records == expected == count_records(path, opts)
    assert pool.height + quarantine.height == expected == summary.pool_rows + summary.quarantined
    rows = (pool["source_row"].to_list() if pool.height else []) + (quarantine["source_row"].to_list() if quarantine.height else [])
    assert len(set(rows)) == len(rows)
    if pool.height:
        finished = finish_pool(pool.lazy()).collect()
        canonical = int(finished["duplicate_of"].is_null().sum())
        assert canonical + int(finished["duplicate_of"].is_not_null().sum()) + quarantine.height == expected
        assert not pool["response"].str.contains("\x00").any()


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(records=st.lists(RECORD | DEEP, max_size=8), fmt=st.sampled_from(["json", "jsonl"]), compression=st.sampled_from(["", ".gz", ".zst"]))
def test_fuzz_json_readers_account_for_every_record(tmp_path_factory, records, fmt, compression):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    path = tmp_path / f"pool.{fmt}{compression}"
    path.write_bytes(_compress(_written_json(records) if fmt == "json" else _written_jsonl(records), compression))
    _check_accounts(tmp_path, path, len(records))


CELL = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r"), max_size=20)


@FUZZ
@given(
    rows=st.lists(st.lists(CELL, min_size=1, max_size=5), max_size=8),
    header=st.sampled_from([["instruction", "input", "output"], ["prompt", "completion"], ["question", "answer", "x"], ["a", "b"]]),
    fmt=st.sampled_from(["csv", "tsv"]),
    compression=st.sampled_from(["", ".gz", ".zst"]),
)
def test_fuzz_delimited_readers_account_for_every_record(tmp_path_factory, rows, header, fmt, compression):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path = tmp_path / f"pool.{fmt}{compression}"
    path.write_bytes(_compress(buffer.getvalue().encode(), compression))
    # Records as the csv module itself reads them back (a row of one empty cell is a blank line).
    expected = sum(1 for r in csv.reader(io.StringIO(buffer.getvalue()), delimiter="\t" if fmt == "tsv" else ",")) - 1
    _check_accounts(tmp_path, path, expected)


@FUZZ
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"instruction": st.none() | TEXT, "output": st.none() | TEXT, "tags": st.none() | st.lists(TEXT, max_size=3)},
        ),
        max_size=8,
    ),
    nested=st.integers(1, 25),
)
def test_fuzz_parquet_reader_accounts_for_every_record(tmp_path_factory, rows, nested):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    payload_type: pa.DataType = pa.string()
    for _ in range(nested):
        payload_type = pa.list_(payload_type)
    table = pa.table(
        {
            "instruction": pa.array([r["instruction"] for r in rows], pa.string()),
            "output": pa.array([r["output"] for r in rows], pa.string()),
            "tags": pa.array([r["tags"] for r in rows], pa.list_(pa.string())),
            "payload": pa.array([deep(nested)["payload"] if i % 2 else None for i in range(len(rows))], payload_type),
        }
    )
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path)
    _check_accounts(tmp_path, path, len(rows), IngestOptions(max_record_bytes=20_000, max_depth=12))


@settings(max_examples=300, deadline=None)
@given(record=RECORD)
def test_fuzz_normalizer_returns_a_row_or_a_reason(record):
    try:
        norm = normalize_record(record, IngestOptions())
    except RecordError as exc:
        assert exc.code and isinstance(exc.detail, str)
        return
    assert norm.instruction.strip() and norm.messages and norm.messages[-1]["role"] == "assistant"
    for turn in norm.messages:
        assert "\x00" not in turn["content"]
    row_id_for(norm.system, norm.messages)


def test_unreadable_file_still_names_itself(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {"instr')
    with pytest.raises(UnreadableFileError, match="broken.json"):
        ingest(tmp_path, path)
