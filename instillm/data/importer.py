"""Import instruction data: route every input row to the canonical output or to the rejects file.

Accounting (checked by the tests): every row read from an input lands exactly once, either
as the source of ≥1 example in OUT or as a line in OUT's rejects file, so
`rows_read == rows_imported + rows_rejected`. A file with no row at all is not a row: it adds
one `empty_file` entry (line 0) to the rejects file and to `rejects_by_reason`, and is listed
in `empty_files`, so `sum(rejects_by_reason.values()) == rows_rejected + len(empty_files)`.
Blank lines of JSONL files are not rows.

Safety: an output (or its rejects file) that is one of the inputs is refused before anything is
read; outputs appear by atomic rename of a temp file beside them (made with the user's umask),
and temp files are removed on any failure, Ctrl-C or SIGTERM. Example ids are unique in OUT: a
row whose id was already written is rejected as `duplicate_id` (the set of written ids is held
in memory, about 100 bytes per example).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from instillm.data.formats import FORMATS, RowContext, Unit, convert_rows, detect_format, mt_bench
from instillm.data.io import RawRow, one_line, read_rows, source_name, source_stem, temp_beside
from instillm.data.schema import Example, line_safe
from instillm.errors import ConfigError, DataError, RowError

DETECT_LOOKAHEAD = 100  # rows scanned for a recognisable record before a file counts as unknown
PROGRESS_EVERY = 1_000
MAX_META_DEPTH = 100  # nesting written in `meta`: deeper rows are rejected (too_deep) so OUT always reads back


@dataclass
class ImportSummary:
    """What an import did: counts overall, per reason and per file (keys rows/imported/rejected/examples)."""

    output: Path
    rejects_path: Path
    rows_read: int = 0
    rows_imported: int = 0
    examples_written: int = 0
    rows_rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    empty_files: list[str] = field(default_factory=list)


def rejects_path_for(output: str | Path) -> Path:
    """OUT.jsonl → OUT.rejects.jsonl (other names get `.rejects.jsonl` appended)."""
    out = Path(output)
    base = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(base + ".rejects.jsonl")


def import_files(
    sources: Sequence[str | Path],
    output: str | Path,
    format: str = "auto",
    strict: bool = False,
    all_paths: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Convert `sources` into canonical JSONL at `output`; rejects go to OUT.rejects.jsonl.

    Raises DataError when an input cannot be read, when OUT or its rejects file would overwrite
    an input, when no row at all is valid, or (strict) at the first rejected row.
    `progress(n)` is told how many more rows were read.
    """
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"format {format!r} is unknown; choose auto or one of {sorted(FORMATS)}")
    names, out = _source_names(sources), Path(output)
    refuse_output_over_inputs(names, out)
    stems = _id_stems(names)
    readers = [(name, read_rows(name)) for name in names]  # resolve every input before writing
    with _sigterm_interrupts(), _Sink(out, strict) as sink:
        for name, rows in readers:
            _import_file(name, rows, format, RowContext.for_file(name, all_paths, stems[name]), sink, progress)
        sink.finish(names)
    return sink.summary


def _source_names(sources: Sequence[str | Path]) -> list[str]:
    """Inputs as given, refusing none or duplicates, however spelled (their ids would collide)."""
    names = [str(s) for s in sources]
    if not names:
        raise DataError("no input given")
    where = Counter(Path(n).resolve() for n in names)
    dups = sorted({n for n in names if where[Path(n).resolve()] > 1})
    if dups:
        raise DataError(f"input given more than once: {dups}")
    return names


def refuse_output_over_inputs(inputs: Iterable[str | Path], output: str | Path) -> None:
    """DataError when OUT or its rejects file would replace or write into one of `inputs` (every
    command that writes canonical data checks this before it reads anything)."""
    out = Path(output)
    rejects = rejects_path_for(out)
    refuse_overwrite(list(inputs), {f"output {out}": out, f"rejects file {rejects} (of output {out})": rejects})


def refuse_overwrite(inputs: Iterable[str | Path], writes: dict[str, Path]) -> None:
    """DataError when a path to be written (keyed by how to name it) would replace or write into an input."""
    for what, target in writes.items():
        for src in inputs:
            if _overwrites(target, Path(src)):
                raise DataError(f"{what} would overwrite input {src}; write the output elsewhere")


def _overwrites(target: Path, src: Path) -> bool:
    """Same file once symlinks are resolved, the same inode (a hard link), or a path inside an input directory."""
    t, s = target.resolve(), src.resolve()
    if t == s or (s.is_dir() and t.is_relative_to(s)):
        return True
    try:
        return os.path.samefile(target, src)
    except OSError:  # one of them does not exist (yet)
        return False


def _id_stems(names: list[str]) -> dict[str, str]:
    """What each input's ids start with: its stem, or enough of its path to tell apart inputs sharing one."""
    stems = {n: source_stem(n) for n in names}
    counts = Counter(stems.values())
    clashing = [n for n in names if counts[stems[n]] > 1]
    return {**stems, **_qualified_stems(clashing)}


def _qualified_stems(names: list[str]) -> dict[str, str]:
    """`<parent folders>/<stem>` with the fewest folders that tell the names apart, or else the file
    name with its suffix (`data.json` / `data.jsonl`) and as few folders as needed."""
    paths = {n: Path(n).resolve() for n in names}
    depth = max((len(p.parts) for p in paths.values()), default=0)
    for tail in (source_stem, source_name):
        for k in range(0 if tail is source_name else 1, depth):
            keys = {n: "/".join(paths[n].parts[-1 - k : -1] + (tail(n),)) for n in names}
            if len(set(keys.values())) == len(names):
                return keys
    return {n: paths[n].as_posix().lstrip("/") for n in names}


def _import_file(
    name: str, rows: Iterator[RawRow], fmt: str, ctx: RowContext, sink: _Sink, progress: Callable[[int], None] | None
) -> None:
    """Convert one input's rows into the sink, detecting its format when asked."""
    rows, used = _resolve_format(iter(rows), fmt)
    sink.summary.formats[name] = used or "unknown"
    counts = sink.summary.per_file.setdefault(name, {"rows": 0, "imported": 0, "rejected": 0, "examples": 0})
    units = convert_rows(rows, used, ctx) if used else map(_undetected, rows)
    pending = 0
    for unit in units:
        sink.add(name, unit, counts)
        pending += len(unit.rows)
        if progress and pending >= PROGRESS_EVERY:
            progress(pending)
            pending = 0
    if progress and pending:
        progress(pending)
    if counts["rows"] == 0:
        sink.empty_file(name)


def _resolve_format(rows: Iterator[RawRow], fmt: str) -> tuple[Iterator[RawRow], str | None]:
    """The format to use: the given one, or the first recognisable record's (None if none is found)."""
    if fmt != "auto":
        return rows, fmt
    head: list[RawRow] = []
    for row in rows:
        head.append(row)
        if row.error is None:
            try:
                return chain(head, rows), detect_format(row.record)
            except RowError:
                pass
        if len(head) >= DETECT_LOOKAHEAD:
            break
    return chain(head, rows), None


def _undetected(row: RawRow) -> Unit:
    """A row of a file whose format was not recognised: rejected with the most precise reason."""
    if row.error is not None:
        return Unit([row], error=row.error)
    try:
        detect_format(row.record)
    except RowError as e:
        return Unit([row], error=e)
    return Unit([row], error=RowError("unknown_format", f"no recognisable row among the first {DETECT_LOOKAHEAD}"))


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While writing, SIGTERM raises KeyboardInterrupt so that cleanup runs (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupt(signum: int, frame: Any) -> None:
    """Signal handler: stop the write the way Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


class _Sink:
    """Writes examples and rejects to temp files beside their targets and keeps the counts."""

    def __init__(self, output: Path, strict: bool) -> None:
        """Open temp files beside OUT and OUT.rejects.jsonl (creating OUT's directory)."""
        self.summary = ImportSummary(output=output, rejects_path=rejects_path_for(output))
        self.strict = strict
        self._ids: set[str] = set()
        output.parent.mkdir(parents=True, exist_ok=True)
        self._out_tmp = temp_beside(output)
        self._rej_tmp = temp_beside(self.summary.rejects_path)
        self._out = open(self._out_tmp, "wb")
        self._rej = open(self._rej_tmp, "wb")

    def __enter__(self) -> _Sink:
        """Use as a context manager so temp files never outlive an import."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close and remove whatever temp file was not renamed into place."""
        self._out.close()
        self._rej.close()
        for tmp in (self._out_tmp, self._rej_tmp):
            tmp.unlink(missing_ok=True)

    def add(self, name: str, unit: Unit, counts: dict[str, int]) -> None:
        """Write a unit's examples, or one reject per row when it failed (or cannot be written)."""
        n, error, data = len(unit.rows), unit.error, b""
        if error is None:
            try:
                data = self._encoded(unit.examples)
            except RowError as e:
                error = e
        counts["rows"] += n
        self.summary.rows_read += n
        if error is not None:
            for row in unit.rows:
                self._reject(name, row.line, error, row.raw)
            counts["rejected"] += n
            self.summary.rows_rejected += n
            return
        self._out.write(data)
        counts["imported"] += n
        counts["examples"] += len(unit.examples)
        self.summary.rows_imported += n
        self.summary.examples_written += len(unit.examples)

    def _encoded(self, examples: list[Example]) -> bytes:
        """The JSONL of a unit's examples, remembering their ids; RowError if one cannot be written or repeats an id."""
        ids = [ex.id for ex in examples]
        repeated = next((i for i in ids if i in self._ids), None)
        if repeated is not None:
            raise RowError("duplicate_id", f"id {repeated!r} was already written")
        data = b"".join(_encode(ex) for ex in examples)
        self._ids.update(ids)
        return data

    def empty_file(self, name: str) -> None:
        """Record an input without any row (line 0); it is not counted as a row."""
        self.summary.empty_files.append(name)
        self._reject(name, 0, RowError("empty_file", "the input holds no row"), "")

    def _reject(self, name: str, line: int, error: RowError, raw: str) -> None:
        """Append one rejects line; in strict mode stop the import instead."""
        by_reason = self.summary.rejects_by_reason
        by_reason[error.reason] = by_reason.get(error.reason, 0) + 1
        entry = {"file": name, "line": line, "reason": error.reason, "detail": error.detail, "raw": raw}
        # backslashreplace turns lone surrogates into \udXXX escapes, which are still valid JSON.
        text = line_safe(json.dumps(entry, ensure_ascii=False))
        self._rej.write((text + "\n").encode("utf-8", "backslashreplace"))
        if self.strict:
            raise DataError(f"{name}:{line}: rejected ({error.reason}): {error.detail}")

    def finish(self, names: list[str]) -> None:
        """Move the files into place; raise DataError when no row was valid (rejects are kept)."""
        self._out.close()
        self._rej.close()
        os.replace(self._rej_tmp, self.summary.rejects_path)  # kept even on failure: it says why
        if self.summary.rows_imported == 0:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            reasons = ", ".join(f"{r}: {c}" for r, c in sorted(self.summary.rejects_by_reason.items()))
            raise DataError(f"no valid row in {shown} ({reasons}); see {self.summary.rejects_path}")
        os.replace(self._out_tmp, self.summary.output)


def _encode(ex: Example) -> bytes:
    """One canonical JSONL line; RowError when the example cannot be written as UTF-8 JSON."""
    if _nests_deeper(ex.meta, MAX_META_DEPTH):
        raise RowError("too_deep", f"meta nests more than {MAX_META_DEPTH} levels deep")
    try:
        return (ex.to_json() + "\n").encode("utf-8")
    except UnicodeEncodeError as e:
        raise RowError("invalid_unicode", f"text holds a lone surrogate at position {e.start}") from e
    except RecursionError:
        raise RowError("too_deep", "meta nests too deeply to write") from None
    except (TypeError, ValueError) as e:
        if "Out of range float" in str(e):
            raise RowError("not_finite", "a number is NaN or infinite, which JSON cannot hold") from e
        raise RowError("wrong_type", f"a value is not JSON-serialisable: {one_line(e)}") from e


def _nests_deeper(value: Any, limit: int) -> bool:
    """Whether lists/objects in `value` nest more than `limit` levels (walked iteratively)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def read_examples(path: str | Path) -> Iterator[Example]:
    """Examples of a canonical JSONL written by import_files; DataError names file:line of a bad row."""
    for row in read_rows(path):
        if row.error is not None:
            raise DataError(f"{path}:{row.line}: {row.error}")
        try:
            yield Example.from_dict(row.record)
        except RowError as e:
            raise DataError(f"{path}:{row.line}: {e}") from e


def import_mt_bench(
    question_path: str | Path, answers_path: str | Path, output: str | Path | None = None
) -> list[Example]:
    """Join MT-Bench questions with answers (`choices[0].turns`) by question_id; unanswered ones are skipped.

    With `output`, the examples are also written there as canonical JSONL (never over an input).
    """
    if output is not None:
        refuse_overwrite([question_path, answers_path], {f"output {output}": Path(output)})
    answers = {_key(r.record): r.record for r in read_rows(answers_path) if r.error is None}
    ctx = RowContext.for_file(str(question_path))
    examples: list[Example] = []
    for row in read_rows(question_path):
        answer = answers.get(_key(row.record)) if row.error is None else None
        if answer is None:
            continue
        joined = {**row.record, "choices": answer.get("choices"), "model_id": answer.get("model_id")}
        try:
            examples += mt_bench(joined, ctx.at(row.line))
        except RowError as e:
            raise DataError(f"{question_path}:{row.line}: {e}") from e
    if output is not None:
        write_examples(examples, output)
    return examples


def _key(record: Any) -> Any:
    """A row's question_id when it can key a dict (str or int), else None (never joined)."""
    qid = record.get("question_id")
    return qid if isinstance(qid, (str, int)) else None


def write_examples(examples: Iterable[Example], output: str | Path) -> Path:
    """Write canonical JSONL atomically (temp file, then rename)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _sigterm_interrupts():
        tmp = temp_beside(out)
        try:
            with open(tmp, "wb") as f:
                for ex in examples:
                    f.write(_encode(ex))
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out
