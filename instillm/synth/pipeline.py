"""Resumable generation runs: an append-only journal of finished items and a small state file.

A teacher-LLM pipeline (Self-Instruct, Evol-Instruct) works in steps: build a batch of requests,
send them, turn the answers into finished items (kept or rejected, with a reason). Each step
ends with `Journal.commit(records, **state)`:

  1. the step's records are appended to `items.jsonl` as JSON lines and fsync'd;
  2. `state.json` (the caller's state plus the committed byte length of `items.jsonl`) is written
     to a temp file, fsync'd, renamed over the old one, and the directory fsync'd.

The rename is the commit point. A run killed anywhere (SIGKILL included) restarts from the last
`state.json`: lines of `items.jsonl` past the committed length (a step appended but not
committed, or a torn last line) are cut off, so the interrupted step is redone exactly once. Its
requests are answered again from the response cache (`CachedBackend`), so nothing already
answered is sent twice. 0 duplicates, 0 losses.

Determinism: a step draws its random choices from `step_rng(seed, *keys)`, a generator seeded by
the run seed and the step's coordinates (stage, batch, ...), never from a generator carried over
from earlier steps. A resumed run therefore makes the same choices an uninterrupted one would,
with nothing to restore but the committed records.

The journal lives in a work directory beside the output (`OUT.jsonl` → `OUT.run/`) and carries a
fingerprint of the settings (config, inputs, model): resuming with different settings is a
ConfigError naming the directory and the settings that differ. The final files (`OUT.jsonl`,
`OUT.rejects.jsonl`, `OUT.stats.json`) are written from the journal at the end, each atomically
(with the umask's permissions); an example UTF-8 cannot hold (a lone surrogate from the teacher)
goes to the rejects as `invalid_unicode`, so OUT.jsonl always reads back.

One writer per run dir: a `Journal` holds an exclusive `flock` on the directory itself (no lock
file) until `close()` or the end of the process (the OS drops it when the process dies, SIGKILL
included); a second process opening it gets a ConfigError at once. Journals of one process share
the lock. Records are JSON lines in UTF-8; one holding a lone surrogate (which UTF-8 cannot hold)
is written with `\\uXXXX` escapes instead, and lines are split on `\\n` only, so any string
round-trips (journals of older versions, with surrogates passed through as bytes, still read).
A damaged `state.json` or committed record is a DataError naming the file and what to do.

Test hook: with `INSTILLM_TEST_KILL_AFTER=K` the process SIGKILLs itself once the journal holds
at least K records — right after a commit, or, with `INSTILLM_TEST_KILL_POINT=append`, after the
records are appended but before the state is written (the torn-step case).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from instillm.config import Config, apply_overrides, build, read_yaml_mapping
from instillm.data.importer import rejects_path_for
from instillm.data.io import write_atomic
from instillm.data.schema import Example
from instillm.errors import ConfigError, DataError

KILL_HOOK = "INSTILLM_TEST_KILL_AFTER"
KILL_POINT_HOOK = "INSTILLM_TEST_KILL_POINT"
ITEMS = "items.jsonl"
STATE = "state.json"
FORMAT_VERSION = 1

T = TypeVar("T")
C = TypeVar("C", bound=Config)


def work_dir_for(output: str | Path) -> Path:
    """Where a run writing `output` keeps its journal: OUT.jsonl → OUT.run/."""
    out = Path(output)
    base = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(base + ".run")


def stats_path_for(output: str | Path) -> Path:
    """OUT.jsonl → OUT.stats.json."""
    out = Path(output)
    base = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(base + ".stats.json")


def step_rng(seed: int, *keys: object) -> random.Random:
    """A generator determined by the run seed and a step's coordinates (same on every resume)."""
    # str seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random("/".join(str(k) for k in (seed, *keys)))


def request_seed(seed: int, *keys: object) -> int:
    """A per-request sampling seed (31 bits), so identical prompts still get distinct samples and cache keys."""
    return step_rng(seed, "request", *keys).getrandbits(31)


class Journal:
    """`items.jsonl` + `state.json` in `directory`; see the module docstring for the commit protocol."""

    def __init__(self, directory: str | Path, fingerprint: Mapping[str, Any]) -> None:
        """Open (resume) or create the journal; ConfigError when it belongs to other settings or
        another process has it open, DataError when its files are damaged."""
        self.dir = Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))
        self.records: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}
        self.resumed = False
        self.dir.mkdir(parents=True, exist_ok=True)
        self._unlock = weakref.finalize(self, _unlock_dir, _lock_dir(self.dir))
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Resume the journal in the (locked) directory, or start an empty one."""
        if (self.dir / STATE).exists():
            self._resume()
        else:
            (self.dir / ITEMS).write_bytes(b"")
            self._write_state(0)

    def close(self) -> None:
        """Release the run dir's lock (once the last journal of this process on it closes)."""
        self._unlock()

    def _resume(self) -> None:
        """Load the committed state and records, cutting off anything appended after the last commit."""
        saved, committed = self._read_state()
        if saved.get("fingerprint") != self.fingerprint:
            raise ConfigError(_mismatch(self.dir, saved.get("fingerprint") or {}, self.fingerprint))
        items = self.dir / ITEMS
        items.touch()  # a missing file reads as empty: shorter than a nonzero committed length
        with open(items, "r+b") as f:
            data = f.read(committed)
            if len(data) < committed:
                raise DataError(f"{items}: shorter than its committed length {committed}; delete {self.dir}")
            f.truncate(committed)
            os.fsync(f.fileno())
        self.records = [_parse_record(items, n, line) for n, line in enumerate(data.split(b"\n")[:-1], 1)]
        self.state = saved.get("state", {})
        self._committed = committed
        self.resumed = True

    def _read_state(self) -> tuple[dict[str, Any], int]:
        """state.json and its committed length; DataError naming the file when it is damaged."""
        path = self.dir / STATE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable run state ({e}); delete {self.dir} to start over") from e
        committed = saved.get("committed_bytes") if isinstance(saved, dict) else None
        if type(committed) is not int or committed < 0 or not isinstance(saved.get("state", {}), dict):
            raise DataError(
                f"{path}: damaged run state (no valid committed_bytes and state); delete {self.dir} to start over"
            )
        return saved, committed

    def commit(self, records: Sequence[Mapping[str, Any]], **state: Any) -> None:
        """Append `records` and make them durable together with the updated `state` (one step)."""
        data = b"".join(_record_line(r) for r in records)
        with open(self.dir / ITEMS, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.records.extend(json.loads(json.dumps(r)) for r in records)
        _maybe_kill(len(self.records), "append")
        self.state.update(state)
        self._write_state(self._committed + len(data))
        _maybe_kill(len(self.records), "commit")

    def _write_state(self, committed: int) -> None:
        """Atomically replace state.json (temp file, fsync, rename, directory fsync)."""
        body = {
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "committed_bytes": committed,
            "state": self.state,
        }
        write_atomic(self.dir / STATE, json.dumps(body, indent=1), fsync=True)
        self._committed = committed

    def of_stage(self, stage: str) -> list[dict[str, Any]]:
        """The committed records of one stage, in commit order."""
        return [r for r in self.records if r.get("stage") == stage]


def _record_line(record: Mapping[str, Any]) -> bytes:
    """One journal line in UTF-8; with `\\uXXXX` escapes when the record holds a lone surrogate."""
    try:
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(record) + "\n").encode("ascii")


def _parse_record(items: Path, line_no: int, line: bytes) -> dict[str, Any]:
    """One committed line (surrogates passed through as bytes, as older versions wrote, are read too)."""
    try:
        record = json.loads(line.decode("utf-8", "surrogatepass"))
    except ValueError as e:
        record = e
    if not isinstance(record, dict):
        raise DataError(f"{items}:{line_no}: damaged committed record ({record}); delete {items.parent} to start over")
    return record


_HELD: dict[tuple[int, int], list[int]] = {}  # (st_dev, st_ino) of a locked run dir -> [fd, open journals]
_HELD_GUARD = threading.Lock()


def _lock_dir(directory: Path) -> tuple[int, int]:
    """Take (or share, within this process) the exclusive flock of run dir `directory`; returns its key."""
    st = directory.stat()
    key = (st.st_dev, st.st_ino)
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            return key
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"{directory} is in use by another process (a run writing the same output); "
                "wait for it to end, or write to another output"
            ) from None
        _HELD[key] = [fd, 1]
    return key


def _unlock_dir(key: tuple[int, int]) -> None:
    """One journal less on a locked run dir; the last one releases the lock."""
    with _HELD_GUARD:
        entry = _HELD.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[key]
                os.close(entry[0])  # closing the descriptor releases the flock


def _mismatch(directory: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The error for resuming a run with other settings, naming the keys that differ."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return (
        f"{directory} holds a run started with other settings (differs in: {', '.join(keys)}); "
        f"rerun with the same settings to resume it, or delete {directory} to start over"
    )


def _maybe_kill(n_records: int, point: str) -> None:
    """The test hook of the module docstring."""
    after = os.environ.get(KILL_HOOK)
    if after and n_records >= int(after) and os.environ.get(KILL_POINT_HOOK, "commit") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def write_outputs(
    output: str | Path, examples: Iterable[Example], rejects: Iterable[Mapping[str, Any]], stats: dict[str, Any]
) -> tuple[Path, Path, Path]:
    """Write OUT.jsonl, OUT.rejects.jsonl and OUT.stats.json, each atomically; their paths.

    An example UTF-8 cannot hold (a lone surrogate from the teacher) becomes a reject
    `invalid_unicode` (stage "output"), as the importer makes it; `stats` is updated in place:
    `stats["output"]` = {examples, kept, rejected by reason}, kept + rejected == examples, and
    `stats["examples"]` = kept (the rows of OUT.jsonl)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    rej, st = rejects_path_for(out), stats_path_for(out)
    lines, invalid = _example_lines(examples)
    stats["output"] = {"examples": len(lines) + len(invalid), "kept": len(lines), "rejected": count_by(invalid)}
    stats["examples"] = len(lines)
    write_atomic(out, b"".join(lines), fsync=True)
    write_atomic(rej, b"".join(_record_line(r) for r in [*rejects, *invalid]), fsync=True)
    write_atomic(st, json.dumps(stats, indent=2, ensure_ascii=False) + "\n", fsync=True)
    return out, rej, st


def _example_lines(examples: Iterable[Example]) -> tuple[list[bytes], list[dict[str, Any]]]:
    """UTF-8 JSONL lines of the examples, and the reject rows of those with a lone surrogate."""
    lines: list[bytes] = []
    invalid: list[dict[str, Any]] = []
    for ex in examples:
        try:
            lines.append((ex.to_json() + "\n").encode("utf-8"))
        except UnicodeEncodeError as e:
            detail = f"example {ex.id!r}: text holds a lone surrogate at position {e.start}"
            invalid.append({"stage": "output", "reason": "invalid_unicode", "detail": detail, "raw": ex.to_dict()})
    return lines, invalid


def batches(items: Sequence[T], size: int, start: int = 0) -> Iterable[tuple[int, Sequence[T]]]:
    """(index of the first item, items) for consecutive batches of `size`, from item `start`."""
    for i in range(start, len(items), size):
        yield i, items[i : i + size]


def count_by(records: Iterable[Mapping[str, Any]], key: str = "reason") -> dict[str, int]:
    """How many records have each value of `key` (None values skipped), sorted by value."""
    out: dict[str, int] = {}
    for r in records:
        v = r.get(key)
        if v is not None:
            out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def config_from_mapping(cls: type[C], data: Mapping[str, Any], what: str) -> C:
    """A config from a plain mapping (YAML); ConfigError lists every problem (unknown keys too)
    under `invalid <what> config`."""
    problems: list[str] = []
    config = build(cls, data, "", problems)
    if problems or config is None:
        raise ConfigError.of(problems, f"invalid {what} config")
    return config


def load_config(cls: type[C], path: str | Path | None, overrides: Sequence[str], what: str) -> C:
    """`cls` from a YAML file (or defaults) plus `key=value` overrides, as `instillm train` reads its config."""
    data = read_yaml_mapping(path) if path is not None else {}
    return config_from_mapping(cls, apply_overrides(data, overrides), what)
