"""Streaming record readers: one `RawRow` per input row, whatever the container.

Supported inputs: `.jsonl`/`.ndjson`, `.json` (an array of objects, or an object holding
one), `.parquet`, `.csv`, the gzip variants of the text formats (`.jsonl.gz`, `.json.gz`,
`.csv.gz`), a directory written by `datasets.Dataset.save_to_disk`, and a hub id
(`org/name` or `org/name:split`) streamed through `datasets.load_dataset`.

JSONL, CSV, parquet and saved datasets are read row by row (memory does not grow with the
file); a `.json` document is parsed whole, because JSON has no row boundaries to stream on.
A row that cannot be parsed is yielded with `error` set, so one bad line is one reject
(malformed_json, undecodable_bytes, not_an_object, too_deep, not_finite for a JSONL `NaN`/
`Infinity`); a file that cannot be read on (corrupt gzip, I/O error) raises one-line DataError
naming the file and the last line read.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instillm.errors import DataError, RowError

MAX_RAW = 10_000
BATCH_ROWS = 1_000
JSONL_SUFFIXES = (".jsonl", ".ndjson")
KNOWN_SUFFIXES = JSONL_SUFFIXES + (".json", ".csv", ".parquet", ".gz")
# `org/name` or `org/name:split`; only consulted when no such local path exists.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")


@dataclass(frozen=True)
class RawRow:
    """One input row: the parsed record, or the error that stopped it from being parsed."""

    file: str
    line: int
    record: Any  # the parsed value (any JSON value, even null); None when `error` is set
    raw: str
    error: RowError | None = None


def temp_beside(target: Path) -> Path:
    """A fresh hidden temp file in the target's directory (so the final rename is atomic), with the
    permissions of any file the user writes (mkstemp's are 0600)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def temp_dir_beside(target: Path) -> Path:
    """A fresh hidden temp directory in the target's directory (renamed onto it when complete), with
    the permissions of any directory the user makes (mkdtemp's are 0700)."""
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o777 & ~_umask())
    except BaseException:
        os.rmdir(tmp)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: str | bytes, fsync: bool = False) -> Path:
    """Write `data` (text is UTF-8) to `path` whole or not at all: a temp file beside it (parents
    created), optionally fsync'd, renamed over it. Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _umask() -> int:
    """The process umask (reading it means setting it and back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_rows(path: str | Path) -> Iterator[RawRow]:
    """Rows of one source; raises DataError now if it cannot be resolved, or while reading if unreadable."""
    name = str(path)
    p = Path(path)
    if p.is_dir():
        return _dataset_dir_rows(name, p)
    if p.exists():
        reader = _file_reader(p)
        return _guard(name, reader(name, p))
    if HUB_ID.match(name) and not _known_suffix(p):
        return _guard(name, _hub_rows(name))
    raise DataError(f"no such file: {name}")


def source_name(path: str | Path) -> str:
    """What `Example.source` records: the file (or directory) name, or the hub id."""
    name = str(path).rstrip("/\\")
    if not Path(name).exists() and HUB_ID.match(name):
        return name
    return Path(name).name


def source_stem(path: str | Path) -> str:
    """The name ids start with: the source name without `.gz`, its data suffix, or a hub org/split."""
    base = source_name(path)
    if "/" in base:
        base = base.split(":")[0].split("/")[-1]
    if base.lower().endswith(".gz"):
        base = base[:-3]
    suffix = Path(base).suffix.lower()
    return base[: -len(suffix)] if suffix in KNOWN_SUFFIXES and len(base) > len(suffix) else base


def _known_suffix(p: Path) -> bool:
    """Whether the name ends like a data file (so a missing one is a typo, not a hub id)."""
    return any(p.name.lower().endswith(s) for s in KNOWN_SUFFIXES)


def _file_reader(p: Path) -> Callable[[str, Path], Iterator[RawRow]]:
    """Pick the reader from the file name; raises DataError for an unsupported type."""
    base = p.name.lower()
    gz = base.endswith(".gz")
    base = base[:-3] if gz else base
    if base.endswith(JSONL_SUFFIXES):
        return _jsonl_rows
    if base.endswith(".json"):
        return _json_rows
    if base.endswith(".csv"):
        return _csv_rows
    if base.endswith(".parquet") and not gz:
        return _parquet_rows
    raise DataError(f"unsupported file type: {p} (expected .jsonl, .json, .csv, .parquet, their .gz, or a dataset dir)")


def _guard(name: str, rows: Iterator[RawRow]) -> Iterator[RawRow]:
    """Turn failures in the middle of a file (corrupt gzip, permissions) into a one-line DataError."""
    last = 0
    try:
        for row in rows:
            last = row.line
            yield row
    except DataError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error, csv.Error) as e:
        where = f"after line {last}" if last else "at its start"
        raise DataError(f"cannot read {name} {where}: {one_line(e)}") from e


def one_line(error: BaseException | str) -> str:
    """An error message on a single line (library messages sometimes hold newlines)."""
    return " ".join(str(error).split())


def _open_binary(p: Path) -> gzip.GzipFile | io.BufferedReader:
    """Open a file for reading bytes, decompressing `.gz` transparently."""
    return gzip.open(p, "rb") if p.name.lower().endswith(".gz") else open(p, "rb")


def _clip(text: str) -> str:
    """The raw text kept for a rejects file, truncated so one huge row cannot bloat it."""
    return text if len(text) <= MAX_RAW else text[:MAX_RAW] + "…"


def _dump(record: Any) -> str:
    """Raw text for a record that came from a non-text container (parquet, json array)."""
    try:
        return _clip(json.dumps(record, ensure_ascii=False, default=str))
    except RecursionError:
        return "<nested too deeply to show>"


def parse_line(name: str, lineno: int, data: bytes) -> RawRow:
    """Decode and parse one JSONL line; decoding per line keeps one bad line to one reject."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        err = RowError("undecodable_bytes", f"line is not valid UTF-8 ({e.reason} at byte {e.start})")
        return RawRow(name, lineno, None, _clip(data.decode("utf-8", "replace")), err)
    try:
        record = _loads_line(text)
    except RowError as e:
        return RawRow(name, lineno, None, _clip(text), e)
    return _row(name, lineno, record, _clip(text))


def _loads_line(text: str) -> Any:
    """One JSON value; RowError when the line is not JSON, nests too deeply, or holds NaN/Infinity."""
    try:
        return json.loads(text, parse_constant=_non_finite)
    except json.JSONDecodeError as e:
        raise RowError("malformed_json", f"{e.msg} at column {e.colno}") from None
    except RecursionError:
        raise RowError("too_deep", "the line nests arrays/objects too deeply to parse") from None
    except ValueError as e:  # e.g. an integer longer than Python's digit limit
        raise RowError("malformed_json", one_line(e)) from None


def _non_finite(token: str) -> Any:
    """json.loads hook for NaN / Infinity / -Infinity: Python accepts them, JSON does not."""
    raise RowError("not_finite", f"{token} is not a JSON number")


def _row(name: str, lineno: int, record: Any, raw: str) -> RawRow:
    """A parsed row, flagged when it is not a JSON object."""
    if not isinstance(record, dict):
        err = RowError("not_an_object", f"expected a JSON object, got {type(record).__name__}")
        return RawRow(name, lineno, None, raw, err)
    return RawRow(name, lineno, record, raw)


def _jsonl_rows(name: str, p: Path) -> Iterator[RawRow]:
    """JSON Lines, one physical line at a time; blank lines are not rows and are skipped."""
    with _open_binary(p) as f:
        for lineno, data in enumerate(f, 1):
            data = data.rstrip(b"\r\n")
            if lineno == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]  # a UTF-8 byte-order mark written by some editors
            if data.strip():
                yield parse_line(name, lineno, data)


def _json_rows(name: str, p: Path) -> Iterator[RawRow]:
    """A JSON document holding a list of rows (files that are really JSON Lines also work)."""
    with _open_binary(p) as f:
        data = f.read()
    if not data.strip():
        return  # an empty document holds no row (reported as an empty file, not a read failure)
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except RecursionError:
        raise DataError(f"cannot read {name}: the document nests arrays/objects too deeply to parse") from None
    except UnicodeDecodeError as e:
        raise DataError(f"cannot read {name}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            raise DataError(f"malformed JSON in {name}: {e.msg} at line {e.lineno} column {e.colno}") from e
        # Many `.json` files in the wild are JSON Lines: several documents, one per line.
        yield from _jsonl_rows(name, p)
        return
    for i, record in enumerate(_row_list(name, doc), 1):
        yield _row(name, i, record, _dump(record))


def _row_list(name: str, doc: Any) -> list:
    """The list of rows in a JSON document: the document itself, or its one list-valued field."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        if len(lists) == 1:
            return doc[lists[0]]
        if "data" in lists:
            return doc["data"]
        if not lists and doc:
            return [doc]  # a single object is a file of one row
    raise DataError(f"{name}: expected a JSON array of objects, or an object holding one list of rows")


def _csv_rows(name: str, p: Path) -> Iterator[RawRow]:
    """CSV with a header row; `line` is the physical line a row starts on (the header is line 1)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long responses exceed the 128 KiB default
    with _open_binary(p) as fb:
        # surrogateescape keeps undecodable bytes visible per row instead of failing the file.
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        start = 2
        for row in reader:
            yield _csv_row(name, start, row, len(reader.fieldnames or ()))
            start = reader.line_num + 1


def _csv_row(name: str, lineno: int, row: dict, n_fields: int) -> RawRow:
    """One CSV row: a record of the present columns, or an error for bad bytes / extra fields."""
    raw = _clip(",".join(str(v) for v in row.values()).encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    if any(isinstance(v, str) and _has_surrogates(v) for v in row.values()):
        return RawRow(name, lineno, None, raw, RowError("undecodable_bytes", "row is not valid UTF-8"))
    if None in row:
        n = n_fields + len(row[None])
        err = RowError("malformed_csv", f"row has {n} fields; the header has {n_fields}")
        return RawRow(name, lineno, None, raw, err)
    # A short row leaves None values: drop them so converters report the missing field.
    return RawRow(name, lineno, {k: v for k, v in row.items() if v is not None}, raw)


def _has_surrogates(text: str) -> bool:
    """Whether a string holds escaped undecodable bytes (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parquet_rows(name: str, p: Path) -> Iterator[RawRow]:
    """Parquet, streamed in record batches so memory stays flat."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for "not a parquet file"
        raise DataError(f"cannot read {name}: {e}") from e
    yield from _batched(name, (b.to_pylist() for b in pf.iter_batches(batch_size=BATCH_ROWS)))


def _batched(name: str, batches: Iterator[list[dict]]) -> Iterator[RawRow]:
    """Number the rows of consecutive batches 1, 2, ..."""
    i = 0
    for batch in batches:
        for record in batch:
            i += 1
            yield _row(name, i, record, _dump(record))


def _dataset_dir_rows(name: str, p: Path) -> Iterator[RawRow]:
    """A directory written by `save_to_disk`: memory-mapped Arrow, read in batches."""
    if (p / "dataset_dict.json").exists():
        splits = sorted(d.name for d in p.iterdir() if d.is_dir())
        raise DataError(
            f"{name} holds several splits {splits}; pass one split directory, e.g. {p / splits[0]}"
            if splits
            else f"{name} holds no split"
        )
    if not (p / "dataset_info.json").exists() and not (p / "state.json").exists():
        raise DataError(f"{name} is a directory but not a saved dataset (no dataset_info.json / state.json)")
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, ArrowInvalid...
        raise DataError(f"cannot load dataset from {name}: {e}") from e
    tables = ds.with_format("arrow").iter(batch_size=BATCH_ROWS)
    return _guard(name, _batched(name, (t.to_pylist() for t in tables)))


def _hub_rows(name: str) -> Iterator[RawRow]:
    """A hub dataset streamed through `datasets.load_dataset` (`org/name[:split]`, default train)."""
    import datasets

    repo, _, split = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, split=split or "train", streaming=True)
    except Exception as e:  # no network, unknown id, gated repo...: all mean "cannot read"
        raise DataError(f"cannot load hub dataset {name!r}: {e}") from e
    for i, record in enumerate(ds, 1):
        yield _row(name, i, record, _dump(record))
