"""Reading datasets: JSONL and Parquet files and objects, manifest-checked prefixes of several shards,
and the built-in splits.

Every record is validated against `metaspec.records.Record` (our `input`/`output` records or chat
`messages` records, in the same file if need be); errors name the source, the line and the field (a
Parquet file's rows are numbered like lines, from 1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from metaspec import builtin
from metaspec.artifacts import MANIFEST, ChecksumMismatch, IncompleteArtifact, NotFound, Uri, read_bytes, read_manifest
from metaspec.records import InvalidData, Record


@dataclass
class LoadReport:
    """What reading a JSONL source found."""

    source: str
    valid: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line number, message)
    duplicate_ids: list[str] = field(default_factory=list)

    def describe(self, limit: int = 10) -> str:
        lines = [f"{self.source}: {self.valid} valid, {len(self.invalid)} invalid"]
        lines += [f"  line {n}: {msg}" for n, msg in self.invalid[:limit]]
        if len(self.invalid) > limit:
            lines.append(f"  … and {len(self.invalid) - limit} more")
        if self.duplicate_ids:
            lines.append(f"  duplicate ids: {', '.join(self.duplicate_ids[:limit])}")
        return "\n".join(lines)


def parse_jsonl(
    lines: Iterable[str], source: str, require_output: bool = True, skip_invalid: bool = False
) -> tuple[list[Record], LoadReport]:
    """Validate JSONL line by line. Invalid lines raise InvalidData (naming line and field) unless
    `skip_invalid`, in which case they are counted in the report. Duplicate ids are always an error
    for the later occurrence (counted as invalid)."""
    reader = _Reader(LoadReport(source), require_output, skip_invalid)
    reader.read(lines, source)
    return reader.records, reader.report


class _Reader:
    """Validates one or several JSONL sources into one record list (ids unique across all of them)."""

    def __init__(self, report: LoadReport, require_output: bool, skip_invalid: bool, limit: int | None = None):
        self.report, self.require_output, self.skip_invalid, self.limit = report, require_output, skip_invalid, limit
        self.records: list[Record] = []
        self.seen: set[str] = set()

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.records) >= self.limit

    def read(self, lines: Iterable[str], source: str) -> None:
        # With several sources the line numbers are per file, so the report's messages name the file.
        where = "" if source == self.report.source else f" (in {source})"
        for number, line in enumerate(lines, start=1):
            if self.full:
                break
            if not line.strip():
                continue
            try:
                record = _parse_line(line, self.require_output).read_from(source)
                if record.id in self.seen:
                    self.report.duplicate_ids.append(record.id)
                    raise ValueError(f"field `id`: duplicate id {record.id!r}{_derived(record)}")
            except ValueError as e:
                self.report.invalid.append((number, f"{e}{where}"))
                if not self.skip_invalid:
                    raise InvalidData(f"{source} line {number}: {e}") from None
                continue
            self.seen.add(record.id)
            self.records.append(record)
        self.report.valid = len(self.records)


def _parse_line(line: str, require_output: bool) -> Record:
    try:
        body = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    try:
        record = Record.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        if not first["loc"] and first["type"] == "value_error":  # a rule about the record as a whole
            raise ValueError(str(first["ctx"]["error"])) from None
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"field `{where}`: {first['msg']}") from None
    problem = record.training_problem() if require_output else None
    if problem:
        raise ValueError(problem)
    return record


def _derived(record: Record) -> str:
    if not (record.is_chat and record.id.startswith("chat-")):
        return ""
    return (
        " (chat records without an `id` get one derived from their content: this conversation repeats an earlier one)"
    )


BUILTIN_SCHEME = "builtin://"
PARQUET = ".parquet"
#: File names a dataset prefix's manifest is read for.
DATA_SUFFIXES = (".jsonl", PARQUET)


def read_records(
    uri: str,
    *,
    require_output: bool = True,
    skip_invalid: bool = False,
    max_examples: int | None = None,
) -> tuple[list[Record], LoadReport]:
    """Read and validate the records at `uri`.

    `uri` is `builtin://train|eval|prompts|distill` (the bundled set, `metaspec.builtin`), a local path,
    `file://` or `pvc://` JSONL or Parquet file, an `s3://` JSONL or Parquet object, or a directory/prefix
    artifact: every `*.jsonl` and `*.parquet` shard its
    `_manifest.json` lists, in manifest order, each checked against its size and sha256. A prefix
    without a complete manifest is refused (`metaspec.artifacts.IncompleteArtifact`): it may still be
    being written. Ids must be unique across all files. `max_examples` stops after that many valid
    records. Errors name the source, the line and the field (`InvalidData`).
    """
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")
    text = str(uri)
    if text.startswith(BUILTIN_SCHEME):
        return _read_builtin(text, require_output, max_examples)
    try:
        where = Uri.parse(text)
    except ValueError as e:
        raise InvalidData(str(e)) from None
    reader = _Reader(LoadReport(str(where)), require_output, skip_invalid, max_examples)
    for source, data in _sources(where):
        if reader.full:
            break
        reader.read(_lines(data, source), source)
    return reader.records, reader.report


def _lines(data: bytes, source: str) -> list[str]:
    """A file's records as JSON lines: JSONL as it is, a Parquet file's rows one per line."""
    if not source.endswith(PARQUET):
        return _decode(data, source).split("\n")  # not splitlines(): U+2028 is valid inside JSON
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise InvalidData(f"{source}: not a readable Parquet file ({e})") from None
    return [json.dumps(row, ensure_ascii=False, default=str) for row in table.to_pylist()]


def _read_builtin(uri: str, require_output: bool, max_examples: int | None) -> tuple[list[Record], LoadReport]:
    split = uri[len(BUILTIN_SCHEME) :].strip("/")
    if split not in builtin.SPLITS:
        raise InvalidData(f"{uri}: no such built-in split; use {', '.join(BUILTIN_SCHEME + s for s in builtin.SPLITS)}")
    if require_output and split in builtin.INPUTS_ONLY:
        raise InvalidData(
            f"{uri}: the built-in {split} split holds inputs without outputs (for teacher generation); "
            "train on builtin://train, or on the teacher's outputs for these inputs"
        )
    records = builtin.records(split)[:max_examples]
    return records, LoadReport(uri, valid=len(records))


def _sources(where: Uri) -> Iterator[tuple[str, bytes]]:
    """`(source, bytes)` of each data file at `where`, fetched lazily (so `max_examples` stops early)."""
    if where.scheme in ("file", "pvc"):
        path = where.local
        if path.is_dir():
            yield from _fetch_verified(where, _manifest_jsonl(where))
        elif path.is_file():
            yield str(where), path.read_bytes()
        else:
            raise NotFound(f"{where} does not exist")
    elif where.scheme == "s3":
        if where.path.endswith(DATA_SUFFIXES):
            yield str(where), read_bytes(where)
            return
        try:
            names = _manifest_jsonl(where)
        except IncompleteArtifact as incomplete:
            try:  # a single object whose name does not end in .jsonl
                data = read_bytes(where) if where.path and not where.path.endswith("/") else None
            except NotFound:
                data = None
            if data is None:
                raise incomplete from None
            yield str(where), data
            return
        yield from _fetch_verified(where, names)
    else:
        raise InvalidData(
            f"{where}: datasets are read from builtin://, s3://, file://, pvc:// or a path, not {where.scheme}://"
        )


def _manifest_jsonl(where: Uri) -> list[tuple[str, dict[str, Any]]]:
    """The `*.jsonl` and `*.parquet` files a complete artifact's manifest lists, in its order, with size
    and sha256."""
    names = [(name, meta) for name, meta in read_manifest(where).files.items() if name.endswith(DATA_SUFFIXES)]
    if not names:
        raise InvalidData(f"{where}: its {MANIFEST} lists no .jsonl or .parquet files")
    return names


def _fetch_verified(where: Uri, names: list[tuple[str, dict[str, Any]]]) -> Iterator[tuple[str, bytes]]:
    for name, meta in names:
        part = where.join(name)
        data = read_bytes(part)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != meta.get("size") or digest != meta.get("sha256"):
            raise ChecksumMismatch(
                f"{part} does not match {where.join(MANIFEST)} (size {len(data)} vs {meta.get('size')}, "
                f"sha256 {digest[:12]}…): it was changed after the manifest was written"
            )
        yield str(part), data


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidData(f"{source} line {line}: not UTF-8 text (byte {e.start}: {e.reason})") from None
