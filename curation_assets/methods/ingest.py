"""Read instruction pools in any common shape and normalize them to one schema.

Formats: JSON (array, or an object holding a records list), JSONL, Parquet, CSV and TSV, each plain,
`.gz` or `.zst`. Shapes: Alpaca (`instruction`/`input`/`output` or `response`, optional `system`
and `history`), prompt/completion, question/answer, ShareGPT (`conversations` with `from`/`value`),
OpenAI messages (`messages` with `role`/`content`) and multi-turn conversations; any other layout
through a column map.

Every record ends either as a pool row or as a quarantine row with a reason code; nothing is
dropped silently. A file that cannot be read at all raises `UnreadableFileError`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
import string
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import ijson
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

FORMATS = ("jsonl", "json", "parquet", "csv", "tsv")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
SIDECAR_SUFFIX = ".ingest.json"

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
POOL_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("source_partition", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("source_format", pa.string()),
        ("shape", pa.string()),
        ("system_prompt", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("response", pa.string()),
        ("extra", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_partition", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("raw_preview", pa.string()),
    ]
)

USER_ROLES = {"user", "human", "prompter", "usr"}
ASSISTANT_ROLES = {"assistant", "gpt", "chatgpt", "gpt4", "gpt-4", "bard", "bing", "model", "bot"}
SYSTEM_ROLES = {"system"}
TOOL_ROLES = {"tool", "function", "observation", "ipython", "function_call", "tool_call"}
RESPONSE_KEYS = ("output", "response")
PREVIEW_CHARS = 300


class UnreadableFileError(RuntimeError):
    """The file as a whole cannot be read (unknown format, broken JSON document, corrupt archive)."""


class RecordError(ValueError):
    """One record cannot be normalized; `code` is the quarantine reason."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class IngestOptions:
    """How to read one file. Set per file by a sidecar `<file>.ingest.json`, or globally in config.

    column_map: target field -> source column name, or a template such as
        "{rationale} So the answer is {answer}." Targets: instruction, input, response, system,
        messages, conversations.
    """

    format: str | None = None
    column_map: dict[str, str] = field(default_factory=dict)
    has_header: bool = True
    column_names: list[str] | None = None
    delimiter: str | None = None
    quote_char: str | None = '"'
    unescape_newlines: bool = False
    records_path: str | None = None
    max_record_bytes: int = 1_000_000
    max_depth: int = 64
    allow_empty_response: bool = False
    strip_markers: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    chunk_rows: int = 50_000

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngestOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ingest options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def merged(self, overrides: dict[str, Any]) -> IngestOptions:
        return IngestOptions.from_dict({**self.as_dict(), **overrides})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class RawRecord:
    """One record as read: a parsed value, or the error that kept it from being parsed."""

    source_row: int
    value: Any = None
    error: RecordError | None = None
    raw: bytes | str = b""

    @property
    def preview(self) -> str:
        raw = self.raw
        if isinstance(raw, bytes):
            raw = raw[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
        return raw[:PREVIEW_CHARS]


@dataclass
class IngestSummary:
    input_records: int = 0
    pool_rows: int = 0
    quarantined: int = 0
    pool_parts: list[Path] = field(default_factory=list)
    quarantine_parts: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- files


def detect_format(path: str | Path) -> tuple[str, str | None]:
    """(format, compression) from the file name, e.g. `x.jsonl.zst` -> ("jsonl", "zstd")."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSIONS:
        compression = COMPRESSIONS[suffixes.pop()]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    fmt = {"ndjson": "jsonl", "jsonlines": "jsonl", "pq": "parquet", "tab": "tsv"}.get(ext, ext)
    if fmt not in FORMATS:
        raise UnreadableFileError(
            f"{path}: unsupported file type {''.join(Path(path).suffixes)!r}; expected one of "
            ".json .jsonl .parquet .csv .tsv, optionally .gz or .zst"
        )
    return fmt, compression


class _ZstdReader(io.RawIOBase):
    """A zstd file, frame after frame. zstandard's own stream reader ends quietly inside a cut-off
    frame, which would land a truncated file as a shorter pool; this raises EOFError there, as gzip
    does (hand-written for that check only; the decompression is zstandard's)."""

    def __init__(self, path: str | Path):
        self._file = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = self._dctx.decompressobj()
        self._in_frame = False
        self._out = b""
        self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at >= len(self._out):
            data = self._file.read(1 << 20)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd stream ended inside a frame (truncated file)")
                return 0
            self._out, self._at = self._decompress(data), 0
        n = min(len(buffer), len(self._out) - self._at)
        buffer[:n] = self._out[self._at : self._at + n]
        self._at += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._frame.decompress(data))
            self._in_frame = not self._frame.eof
            if self._in_frame:
                break
            data = self._frame.unused_data  # the next frame starts here
            self._frame = self._dctx.decompressobj()
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


def open_binary(path: str | Path, compression: str | None) -> io.BufferedIOBase:
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 20)
    return open(path, "rb")


def is_data_file(path: Path) -> bool:
    """True for files the landing sensor should ingest (not sidecars, hidden or partial files)."""
    name = path.name
    if name.startswith(".") or name.endswith(SIDECAR_SUFFIX):
        return False
    if name.endswith((".part", ".tmp", ".crdownload", ".partial")):
        return False
    try:
        detect_format(path)
    except UnreadableFileError:
        return False
    return True


def sidecar_path(path: str | Path) -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def load_options(path: str | Path, base: IngestOptions | None = None) -> IngestOptions:
    """Options for `path`: `base` overlaid by the file's sidecar `<path>.ingest.json`, if any."""
    base = base or IngestOptions()
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        return base
    try:
        overrides = orjson.loads(sidecar.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise UnreadableFileError(f"{sidecar}: sidecar is not valid JSON ({exc})") from exc
    try:
        return base.merged(overrides)
    except (TypeError, ValueError) as exc:
        raise UnreadableFileError(f"{sidecar}: {exc}") from exc


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- records


def nesting_depth_exceeds(value: Any, limit: int) -> bool:
    """True when lists/objects nest more than `limit` levels (the record itself is level 1).

    Iterative and stops at the first level past the limit, so a record nesting 100,000 levels
    costs no recursion and no more than `limit` levels of work on its deepest path."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _too_deep(limit: int) -> RecordError:
    return RecordError("too_deep", f"lists/objects nest more than {limit} levels")


def _json_record(source_row: int, value: Any, opts: IngestOptions) -> RawRecord:
    if nesting_depth_exceeds(value, opts.max_depth):
        return RawRecord(source_row, error=_too_deep(opts.max_depth), raw=_shallow_preview(value))
    raw = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    if len(raw) > opts.max_record_bytes:
        return RawRecord(source_row, error=RecordError("too_large", f"record is {len(raw)} bytes; limit {opts.max_record_bytes}"), raw=raw)
    return RawRecord(source_row, value=value, raw=raw)


def _shallow_preview(value: Any) -> str:
    """A preview of a record too deep to serialize: its outer levels only."""
    text, node = "", value
    while isinstance(node, (dict, list)) and len(text) < PREVIEW_CHARS:
        if isinstance(node, dict):
            text += "{" + ", ".join(map(repr, list(node)[:8])) + ": "
            node = next(iter(node.values()), None)
        else:
            text += "["
            node = node[0] if node else None
    return text[:PREVIEW_CHARS]


def iter_jsonl(stream: io.BufferedIOBase, opts: IngestOptions) -> Iterator[RawRecord]:
    """One record per non-blank line; `source_row` is the line number."""
    for lineno, line in enumerate(stream, start=1):
        if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if not line.strip():
            continue
        rec = RawRecord(lineno, raw=line)
        if len(line) > opts.max_record_bytes:
            rec.error = RecordError("too_large", f"line is {len(line)} bytes; limit {opts.max_record_bytes}")
        else:
            try:
                rec.value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:  # orjson also rejects invalid UTF-8
                if _is_depth_error(exc):
                    rec.error = _too_deep(opts.max_depth)
                else:
                    rec.error = RecordError("invalid_utf8" if "UTF-8" in str(exc) else "invalid_json", str(exc))
            else:
                if nesting_depth_exceeds(rec.value, opts.max_depth):
                    rec.value, rec.error = None, _too_deep(opts.max_depth)
        yield rec


def _first_char(stream: io.BufferedIOBase) -> bytes:
    head = stream.peek(4096) if hasattr(stream, "peek") else b""
    head = head.lstrip(b"\xef\xbb\xbf").lstrip()
    return head[:1]


def iter_json(stream: io.BufferedIOBase, opts: IngestOptions, path: str) -> Iterator[RawRecord]:
    """Elements of a top-level array (streamed), or of the list at `records_path`.

    A `.json` file that is really JSON Lines (one object per line) is read as JSON Lines.
    """
    first = _first_char(stream)
    if opts.records_path:
        prefix = opts.records_path + ".item"
    elif first == b"[":
        prefix = "item"
    elif first == b"{":
        data = stream.read()
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if _is_depth_error(exc):
                # orjson stops at 1,024 levels; ijson builds deep values without recursion, and
                # the deep records are then quarantined one by one.
                doc = _parse_deep_object(data, path)
            elif _starts_as_json_lines(data):  # JSON Lines under a .json name
                yield from iter_jsonl(io.BytesIO(data), opts)
                return
            else:
                raise UnreadableFileError(f"{path}: not valid JSON ({exc})") from exc
        lists = [k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if _looks_like_record(doc) or len(lists) != 1:
            if not _looks_like_record(doc):
                raise UnreadableFileError(
                    f"{path}: a JSON object with no single list of records; set records_path "
                    f"(lists found: {lists or 'none'})"
                )
            yield _json_record(1, doc, opts)
            return
        for i, value in enumerate(doc[lists[0]], start=1):
            yield _json_record(i, value, opts)
        return
    else:
        raise UnreadableFileError(f"{path}: not a JSON array or object (starts with {first!r})")
    try:
        for i, value in enumerate(ijson.items(stream, prefix, use_float=True), start=1):
            yield _json_record(i, value, opts)
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(f"{path}: not valid JSON ({exc})") from exc


def _is_depth_error(exc: orjson.JSONDecodeError) -> bool:
    return "depth limit" in str(exc) or "recursion limit" in str(exc).lower()


def _parse_deep_object(data: bytes, path: str) -> dict:
    try:
        return dict(ijson.kvitems(io.BytesIO(data), "", use_float=True))
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(f"{path}: not valid JSON ({exc})") from exc


def _starts_as_json_lines(data: bytes) -> bool:
    lines = [line for line in data.split(b"\n", 3)[:3] if line.strip()][:2]
    try:
        return len(lines) == 2 and all(isinstance(orjson.loads(line), dict) for line in lines)
    except orjson.JSONDecodeError:
        return False


def _looks_like_record(doc: dict) -> bool:
    return any(k in doc for k in ("instruction", "messages", "conversations", "prompt", "question", "turns"))


def iter_delimited(stream: io.BufferedIOBase, opts: IngestOptions, fmt: str, path: str) -> Iterator[RawRecord]:
    """CSV/TSV rows as dicts; `source_row` counts data records from 1 (the header is not one)."""
    delimiter = opts.delimiter or ("\t" if fmt == "tsv" else ",")
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    quoting = csv.QUOTE_MINIMAL if opts.quote_char else csv.QUOTE_NONE
    reader = csv.reader(text, delimiter=delimiter, quotechar=opts.quote_char or '"', quoting=quoting, strict=False)
    csv.field_size_limit(max(opts.max_record_bytes * 2, 1 << 20))
    names = opts.column_names
    try:
        if opts.has_header:
            header = next(reader, None)
            if header is None:
                return
            names = names or header
        for i, row in enumerate(reader, start=1):
            line = delimiter.join(row).encode("utf-8", "surrogateescape")
            rec = RawRecord(i, raw=line)
            if names is None:
                names = [f"column_{j + 1}" for j in range(len(row))]
            if len(line) > opts.max_record_bytes:
                rec.error = RecordError("too_large", f"row is {len(line)} bytes; limit {opts.max_record_bytes}")
            elif len(row) != len(names):
                rec.error = RecordError("ragged_row", f"expected {len(names)} fields, found {len(row)}")
            elif any(_has_surrogates(v) for v in row):
                rec.error = RecordError("invalid_utf8", "row contains bytes that are not UTF-8")
            else:
                if opts.unescape_newlines:
                    row = [v.replace("\\n", "\n") for v in row]
                rec.value = dict(zip(names, row))
            yield rec
    except csv.Error as exc:
        raise UnreadableFileError(f"{path}: CSV parse error ({exc})") from exc


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def iter_parquet(path: str | Path, opts: IngestOptions) -> Iterator[RawRecord]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UnreadableFileError(f"{path}: not a readable Parquet file ({exc})") from exc
    row = 0
    for batch in pf.iter_batches(batch_size=opts.chunk_rows):
        for value in batch.to_pylist():
            row += 1
            yield _json_record(row, value, opts)


def resolve_format(path: str | Path, opts: IngestOptions) -> tuple[str, str | None]:
    """The file's (format, compression): from `opts.format` when set, else from its name."""
    if not opts.format:
        return detect_format(path)
    if opts.format not in FORMATS:
        raise UnreadableFileError(f"{path}: format {opts.format!r} is not one of {FORMATS}")
    return opts.format, COMPRESSIONS.get(Path(path).suffix.lower())


def iter_records(path: str | Path, opts: IngestOptions) -> Iterator[RawRecord]:
    fmt, compression = resolve_format(path, opts)
    if fmt == "parquet":
        yield from iter_parquet(path, opts)
        return
    try:
        with open_binary(path, compression) as stream:
            if fmt == "jsonl":
                yield from iter_jsonl(stream, opts)
            elif fmt == "json":
                yield from iter_json(stream, opts, str(path))
            else:
                yield from iter_delimited(stream, opts, fmt, str(path))
    except (OSError, EOFError, zstandard.ZstdError) as exc:  # corrupt gzip/zstd stream, truncated archive
        raise UnreadableFileError(f"{path}: cannot decompress or read ({exc})") from exc


def count_records(path: str | Path, opts: IngestOptions) -> int:
    """Records in a file, counted independently of normalization (for the reconcile check).

    JSON Lines: non-blank lines; Parquet: the footer's row count; other formats: parsed records.
    """
    fmt, compression = resolve_format(path, opts)
    if fmt == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "jsonl":
        with open_binary(path, compression) as stream:
            return sum(1 for line in stream if line.strip() and line.strip() != b"\xef\xbb\xbf")
    return sum(1 for _ in iter_records(path, opts))


# --------------------------------------------------------------------------- normalization


@dataclass
class Normalized:
    shape: str
    system: str | None
    messages: list[dict[str, str]]
    instruction: str
    input: str
    response: str
    extra: dict[str, Any]


_FIELD = re.compile(r"\{([^{}]+)\}")


def _render(template: str, record: dict) -> Any:
    """A column name gives the raw value; a template gives a string with {column} filled in."""
    if not _FIELD.search(template):
        if template not in record:
            raise RecordError("missing_field", f"mapped column {template!r} is absent")
        return record[template]
    names = [n for _, n, _, _ in string.Formatter().parse(template) if n]
    for name in names:
        if name not in record:
            raise RecordError("missing_field", f"mapped column {name!r} is absent")
    return _FIELD.sub(lambda m: _scalar_text(record[m.group(1)]), template)


def _scalar_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if isinstance(value, (int, float, bool)):
        return str(value)
    return orjson.dumps(value).decode()


def _text(record: dict, key: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise RecordError("missing_field", f"field {key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise RecordError("mistyped_field", f"field {key!r} is {type(value).__name__}, expected string")
    return value


def _strip_markers(text: str, markers: list[str]) -> str:
    for marker in markers:
        if marker and text.endswith(marker):
            return text[: -len(marker)]
    return text


def _role(raw: Any) -> str:
    if not isinstance(raw, str):
        raise RecordError("mistyped_field", f"turn role is {type(raw).__name__}, expected string")
    role = raw.strip().lower()
    for name, group in (("user", USER_ROLES), ("assistant", ASSISTANT_ROLES), ("system", SYSTEM_ROLES), ("tool", TOOL_ROLES)):
        if role in group:
            return name
    raise RecordError("bad_role", f"unknown turn role {raw!r}")


def _turns(value: Any, role_key: str, content_key: str, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RecordError("mistyped_field", f"field {key!r} must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RecordError("mistyped_field", f"{key}[{i}] is {type(turn).__name__}, expected object")
        if role_key not in turn or content_key not in turn:
            raise RecordError("missing_field", f"{key}[{i}] needs {role_key!r} and {content_key!r}")
        content = turn[content_key]
        if not isinstance(content, str):
            raise RecordError("mistyped_field", f"{key}[{i}].{content_key} is {type(content).__name__}, expected string")
        turns.append({"role": _role(turn[role_key]), "content": content})
    return turns


def _conversation_shape(record: dict) -> tuple[str, str, list[dict[str, str]]] | None:
    for key in ("messages", "conversations", "conversation", "dialog"):
        if key not in record:
            continue
        value = record[key]
        first = value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else {}
        if "from" in first or "value" in first:
            return "sharegpt", key, _turns(value, "from", "value", key)
        return "openai_messages", key, _turns(value, "role", "content", key)
    return None


def normalize_record(value: Any, opts: IngestOptions) -> Normalized:
    """Map one parsed record to the normalized conversation, or raise RecordError."""
    if not isinstance(value, dict):
        raise RecordError("not_an_object", f"record is {type(value).__name__}, expected object")
    record = value
    used: set[str] = set()
    if opts.column_map:
        mapped = {}
        for target, template in opts.column_map.items():
            rendered = _render(template, record)
            if target in ("instruction", "input", "response", "system") and not isinstance(rendered, (str, type(None))):
                rendered = _scalar_text(rendered)
            mapped[target] = rendered
            used.update(_FIELD.findall(template) or [template])
        record = mapped

    system = None
    conv = _conversation_shape(record)
    if conv is not None:
        shape, key, turns = conv
        used.add(key)
        if "system" in record:
            system = _text(record, "system", required=False) or None
            used.add("system")
    elif "instruction" in record:
        shape = "alpaca"
        response_key = next((k for k in RESPONSE_KEYS if k in record), None)
        if response_key is None and not opts.allow_empty_response:
            raise RecordError("missing_field", "field 'output' (or 'response') is missing")
        instruction = _text(record, "instruction")
        inp = _text(record, "input", required=False)
        response = _text(record, response_key, required=False) if response_key else ""
        system = _text(record, "system", required=False) or None
        used.update(["instruction", "input", "system", *([response_key] if response_key else [])])
        turns = _history_turns(record.get("history"))
        if turns:
            used.add("history")
        user = instruction + ("\n" + inp if inp else "")
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
        return _finish(shape, system, turns, instruction, inp, record, used, opts)
    elif "prompt" in record:
        shape = "prompt_completion"
        response_key = next((k for k in ("completion", "response", "output") if k in record), None)
        if response_key is None and not opts.allow_empty_response:
            raise RecordError("missing_field", "field 'completion' is missing")
        prompt = _text(record, "prompt")
        response = _text(record, response_key, required=False) if response_key else ""
        used.update(["prompt", *([response_key] if response_key else [])])
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    elif "question" in record:
        shape = "question_answer"
        if "answer" not in record and not opts.allow_empty_response:
            raise RecordError("missing_field", "field 'answer' is missing")
        question = _text(record, "question")
        answer = _text(record, "answer", required=False)
        used.update(["question", "answer"])
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    elif "turns" in record and isinstance(record["turns"], list):
        shape = "user_turns"  # prompts without responses (MT-Bench, Vicuna questions)
        if not all(isinstance(t, str) for t in record["turns"]) or not record["turns"]:
            raise RecordError("mistyped_field", "field 'turns' must be a non-empty list of strings")
        used.add("turns")
        turns = [{"role": "user", "content": t} for t in record["turns"]]
    else:
        keys = ", ".join(sorted(map(str, value))[:12])
        raise RecordError("unknown_shape", f"no instruction/response fields recognized (keys: {keys}); set a column_map")

    if turns and turns[0]["role"] == "system":
        system = system or turns[0]["content"]
        turns = turns[1:]
    first_user = next((t["content"] for t in turns if t["role"] == "user"), None)
    if first_user is None:
        raise RecordError("no_user_turn", "conversation has no user turn")
    return _finish(shape, system, turns, first_user, "", record, used, opts)


def _history_turns(history: Any) -> list[dict[str, str]]:
    if history in (None, []):
        return []
    if not isinstance(history, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in history
    ):
        raise RecordError("mistyped_field", "field 'history' must be a list of [prompt, response] pairs")
    return [t for q, a in history for t in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


# C0 controls but tab, newline and carriage return; DEL; C1 controls. NUL bytes and terminal escapes
# in a cell are debris of exports and scrapes, never content: they are removed from all text.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` without control characters (tab, newline and CR stay); a lone surrogate, which no
    UTF-8 file can hold, is a quarantine reason (`invalid_utf8`)."""
    if not text.isascii() and _SURROGATES.search(text):
        raise RecordError("invalid_utf8", "text holds a lone UTF-16 surrogate")
    return _CONTROL_CHARS.sub("", text)


def _finish(shape, system, turns, instruction, inp, record, used, opts) -> Normalized:
    system = clean_text(system) if system else system
    instruction, inp = clean_text(instruction), clean_text(inp)
    for t in turns:
        t["content"] = clean_text(t["content"])
        if t["role"] == "assistant":
            t["content"] = _strip_markers(t["content"], opts.strip_markers)
    assistant = [t["content"] for t in turns if t["role"] == "assistant"]
    response = assistant[-1] if assistant else ""
    if not opts.allow_empty_response:
        if not assistant:
            raise RecordError("no_assistant_turn", "conversation has no assistant turn")
        if turns[-1]["role"] != "assistant":
            raise RecordError("ends_with_user_turn", "the last turn has no response")
        if any(not a.strip() for a in assistant):
            raise RecordError("empty_response", "a response is empty")
    if not instruction.strip():
        raise RecordError("empty_instruction", "the instruction is empty")
    extra = {k: v for k, v in record.items() if k not in used} if not opts.column_map else {}
    return Normalized(shape, system, turns, instruction, inp, response, extra)


def canonical_text(text: str) -> str:
    """Whitespace- and Unicode-normalized content used for identity (not stored)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return text.replace("\r\n", "\n").strip()


def row_id_for(system: str | None, messages: list[dict[str, str]]) -> str:
    """Stable content hash of the normalized conversation (system prompt included)."""
    turns = [["system", canonical_text(system)]] if system and system.strip() else []
    turns += [[m["role"], canonical_text(m["content"])] for m in messages]
    return hashlib.blake2b(orjson.dumps(turns), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- chunked ingest


class _Columns:
    """Column lists for one chunk; `rows` counts appended rows."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.data: dict[str, list] = {name: [] for name in schema.names}
        self.rows = 0

    def table(self) -> pa.Table:
        table = pa.Table.from_pydict(self.data, schema=self.schema)
        self.data = {name: [] for name in self.schema.names}
        self.rows = 0
        return table


def ingest_file(
    path: str | Path,
    opts: IngestOptions,
    *,
    partition: str,
    source_file: str,
    staging_dir: str | Path,
) -> IngestSummary:
    """Read and normalize one file into Parquet parts under `staging_dir`, in bounded memory."""
    fmt, _ = resolve_format(path, opts)
    staging = Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    pool, quarantine = _Columns(POOL_SCHEMA), _Columns(QUARANTINE_SCHEMA)
    summary = IngestSummary()

    def flush(force: bool = False) -> None:
        for cols, parts, prefix in ((pool, summary.pool_parts, "pool"), (quarantine, summary.quarantine_parts, "quarantine")):
            if cols.rows and (force or cols.rows >= opts.chunk_rows):
                part = staging / f"{prefix}-{len(parts):05d}.parquet"
                pq.write_table(cols.table(), part, compression="zstd")
                parts.append(part)

    for rec in iter_records(path, opts):
        summary.input_records += 1
        error = rec.error
        if error is None:
            try:
                norm = normalize_record(rec.value, opts)
            except RecordError as exc:
                error = exc
        if error is not None:
            q = quarantine.data
            q["source_partition"].append(partition)
            q["source_file"].append(source_file)
            q["source_row"].append(rec.source_row)
            q["reason"].append(error.code)
            q["detail"].append(error.detail)
            q["raw_preview"].append(rec.preview)
            quarantine.rows += 1
            summary.quarantined += 1
        else:
            d = pool.data
            d["row_id"].append(row_id_for(norm.system, norm.messages))
            d["source_partition"].append(partition)
            d["source_file"].append(source_file)
            d["source_row"].append(rec.source_row)
            d["source_format"].append(fmt)
            d["shape"].append(norm.shape)
            d["system_prompt"].append(norm.system)
            d["messages"].append(norm.messages)
            d["instruction"].append(norm.instruction)
            d["input"].append(norm.input)
            d["response"].append(norm.response)
            d["extra"].append(orjson.dumps(norm.extra, option=orjson.OPT_NON_STR_KEYS).decode() if norm.extra else None)
            pool.rows += 1
            summary.pool_rows += 1
            if pool.rows >= opts.chunk_rows or quarantine.rows >= opts.chunk_rows:
                flush()
    flush(force=True)
    return summary


# --------------------------------------------------------------------------- identity across rows


def finish_pool(pool: pl.LazyFrame) -> pl.LazyFrame:
    """Add turn count, lengths and `duplicate_of` (within the file) to the staged rows of one shard."""
    duplicates = mark_duplicates(pool.select("row_id", "source_partition", "source_row"))
    duplicates = duplicates.filter(pl.col("duplicate_of").is_not_null()).select("source_row", "duplicate_of").collect()
    contents = pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars())
    return pool.with_columns(
        n_turns=pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.sum().cast(pl.Int32),
        instruction_chars=pl.col("instruction").str.len_chars().cast(pl.Int32),
        input_chars=pl.col("input").str.len_chars().cast(pl.Int32),
        response_chars=pl.col("response").str.len_chars().cast(pl.Int32),
        total_chars=(contents.list.sum() + pl.col("system_prompt").str.len_chars().fill_null(0)).cast(pl.Int64),
    ).join(duplicates.lazy(), on="source_row", how="left", maintain_order="left")


def mark_duplicates(pool: pl.LazyFrame) -> pl.LazyFrame:
    """Add `duplicate_of` = "<partition>#<row>" of the first copy of each conversation in this
    shard, else null. Nothing is dropped here; copies across files are resolved in pool order by
    the global steps (curation_assets/shards.py)."""
    first = pool.group_by("row_id").agg(pl.col("source_row").min().alias("_first_row"))
    out = pool.join(first, on="row_id", how="left", maintain_order="left")
    within = pl.when(pl.col("source_row") != pl.col("_first_row")).then(
        pl.col("source_partition") + "#" + pl.col("_first_row").cast(pl.String)
    )
    return out.with_columns(within.alias("duplicate_of")).drop("_first_row")
