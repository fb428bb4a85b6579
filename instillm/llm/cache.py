"""An on-disk response cache in front of any Backend, so a re-run pipeline re-sends nothing answered.

One sqlite row per sample: the key is `LLMRequest.key(model, sample index)` (model, kind,
messages/prompt and every sampling setting except `n`), the row holds the sample's text, finish
reason and token counts. The model is the backend's `cache_id` when it has one (local backends:
the path plus the names, sizes and mtimes of its files, so re-trained weights in the same
directory miss the cache), else its `model` name (an endpoint's served name: a different model
served under the same name is not detected). `generate` looks up samples 0..n-1 of every request and sends only what
is missing: a request with 2 of its 4 samples on disk is sent with n=2 and the answers are
stored as samples 2 and 3 (the sample index is the position in the response). One exception: a
*seeded* sampling request with samples missing is sent with n = the highest missing index + 1,
and only the missing positions are stored, because a seeded backend draws sample i from
(seed, i): asking for n=2 would give samples 0 and 1 again. Identical requests in one batch are
sent once. Each answer is committed as soon as the inner backend hands it over
(`on_response`), so a pipeline killed or failing mid-batch loses nothing already answered.

Concurrency: one `CachedBackend` may be used from several threads (one connection behind a
lock). Several processes may share one file: the database is in WAL mode, so readers never
block and writers take turns (each waits up to `BUSY_TIMEOUT` seconds for the write lock).
Processes do not see each other's in-flight requests, though: two processes running the same
batch at the same time may both send a request; the first answer stored wins (later writes of
a key are ignored) and every later run returns that one. With `synchronous=NORMAL` a killed
process loses no committed answer; a power cut may lose the last few.

A damaged cache file (not sqlite, a malformed database, or a sqlite file of something else) is a
DataError naming the file and saying to delete it or move it aside: the cache is not rebuilt on
its own, since another process may be using that file. A sample text holding a lone surrogate
(which UTF-8 cannot hold) is stored as UTF-8 bytes with the surrogate passed through and read
back as the same string.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from instillm.errors import ConfigError, DataError
from instillm.llm.backend import Backend, LLMRequest, LLMResponse, LLMResponseError, LLMSample, OnResponse, Progress

BUSY_TIMEOUT = 60.0  # seconds a writer waits for another process's write lock
_LOOKUP_CHUNK = 500  # keys per SELECT (sqlite caps the number of bound parameters)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    sample INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""
_COLUMNS = ["key", "model", "sample", "text", "finish_reason", "prompt_tokens", "completion_tokens", "created"]


@contextlib.contextmanager
def _usable(path: Path) -> Iterator[None]:
    """sqlite's "not a database" / "malformed" errors as a DataError naming the file and the fix."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        if type(e) is not sqlite3.DatabaseError:  # locked, full disk, a bug: not damage
            raise
        raise _damaged(path, str(e)) from e


def _damaged(path: Path, why: str) -> DataError:
    return DataError(
        f"backend.cache: {path} is not a usable response cache ({why}); delete it or move it "
        "aside to start an empty one (its answers will be requested again)"
    )


def _to_db(text: str) -> str | bytes:
    """Sample text as stored: UTF-8 bytes, surrogates passed through, when sqlite cannot take the str."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def _from_db(text: str | bytes) -> str:
    return text.decode("utf-8", "surrogatepass") if isinstance(text, bytes) else text


@dataclasses.dataclass
class _Job:
    """One request sent to the inner backend: which sample index each response position fills."""

    request: LLMRequest
    slots: list[int]  # slots[position] = sample index stored, or -1 (a position not needed)
    waiting: list[int] = dataclasses.field(default_factory=list)  # caller's requests it completes


class CachedBackend:
    """`inner` behind the sqlite response cache at `path`; see the module docstring."""

    def __init__(self, inner: Backend, path: str | Path) -> None:
        self.inner = inner
        self.model = inner.model
        # keys name the model by `cache_id` where the backend has one (local weights: path + file stamps)
        self._key_model = getattr(inner, "cache_id", None) or inner.model
        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(
                f"backend.cache: {self.path} is a directory; give a file path (e.g. {self.path}/llm.sqlite)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False)
        try:
            self._init_db()
        except BaseException:
            self._db.close()
            raise
        self.hits = 0  # samples returned from disk, over this object's life
        self.sent = 0  # samples asked of the inner backend

    def _init_db(self) -> None:
        """WAL mode, the table, and a check that an existing table is ours."""
        with _usable(self.path):
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
            columns = [row[1] for row in self._db.execute("PRAGMA table_info(samples)")]
        if columns != _COLUMNS:
            raise _damaged(self.path, f"a sqlite file of something else: table samples has columns {columns}")

    def generate(
        self, requests: Sequence[LLMRequest], progress: Progress | None = None, on_response: OnResponse | None = None
    ) -> list[LLMResponse]:
        """Answer every request from disk where possible; send, store and return the rest."""
        requests = list(requests)
        keys = [[r.key(self._key_model, s) for s in range(r.params.n)] for r in requests]
        found = self._lookup({k for ks in keys for k in ks})
        results: list[LLMResponse | None] = [None] * len(requests)
        fresh: dict[str, LLMSample] = {}

        def finish(indices: list[int]) -> None:
            for i in indices:
                resp = results[i] = LLMResponse(tuple(found.get(k) or fresh[k] for k in keys[i]), self.model)
                if on_response is not None:
                    on_response(i, resp)
            if progress is not None and indices:
                progress(len(indices))

        jobs = self._plan(requests, keys, found)
        from_disk = [i for i, ks in enumerate(keys) if all(k in found for k in ks)]
        self.hits += sum(len(keys[i]) for i in from_disk)
        finish(from_disk)

        def store(j: int, resp: LLMResponse) -> None:
            fresh.update(self._store(jobs[j], resp))
            finish(jobs[j].waiting)

        self._send(jobs, store)
        return results  # type: ignore[return-value]  # every request is on disk or in a job

    def _plan(self, requests: list[LLMRequest], keys: list[list[str]], found: dict[str, LLMSample]) -> list[_Job]:
        """One job per distinct request with samples missing (identical requests are sent once)."""
        first: dict[str, int] = {}  # request identity -> first index
        missing: dict[str, set[int]] = {}
        waiting: dict[str, list[int]] = {}
        for i, (r, ks) in enumerate(zip(requests, keys)):
            need = {s for s, k in enumerate(ks) if k not in found}
            if need:
                ident = r.key(self._key_model, -1)
                first.setdefault(ident, i)
                missing.setdefault(ident, set()).update(need)
                waiting.setdefault(ident, []).append(i)
        return [self._job(requests[first[ident]], sorted(missing[ident]), waiting[ident]) for ident in first]

    @staticmethod
    def _job(request: LLMRequest, missing: list[int], waiting: list[int]) -> _Job:
        """The request to send for `missing` sample indices (see the seeded exception above)."""
        p = request.params
        if p.seed is not None and p.temperature > 0:
            slots = [s if s in missing else -1 for s in range(max(missing) + 1)]
        else:
            slots = list(missing)
        sent = dataclasses.replace(request, params=dataclasses.replace(p, n=len(slots)))
        return _Job(sent, slots, waiting)

    def _send(self, jobs: list[_Job], store: OnResponse) -> None:
        """Ask the inner backend for every job, storing each answer as it arrives."""
        if not jobs:
            return
        self.sent += sum(len(j.slots) for j in jobs)
        batch = [j.request for j in jobs]
        generate: Any = self.inner.generate  # `on_response` is an optional extension of the Backend protocol
        if "on_response" in inspect.signature(generate).parameters:
            generate(batch, on_response=store)
            return
        for j, resp in enumerate(self.inner.generate(batch)):  # a backend that cannot report early
            store(j, resp)

    def _store(self, job: _Job, resp: LLMResponse) -> dict[str, LLMSample]:
        """Write the needed samples of one answer in one transaction; returns them by key."""
        if len(resp.samples) != len(job.slots):
            raise LLMResponseError(f"{self.model}: asked for {len(job.slots)} sample(s), got {len(resp.samples)}")
        out: dict[str, LLMSample] = {}
        rows = []
        now = time.time()
        for s, x in zip(job.slots, resp.samples):
            if s >= 0:
                key = job.request.key(self._key_model, s)
                out[key] = x
                rows.append(
                    (
                        key,
                        self._key_model,
                        s,
                        _to_db(x.text),
                        x.finish_reason,
                        x.prompt_tokens,
                        x.completion_tokens,
                        now,
                    )
                )
        with self._lock, _usable(self.path), self._db:  # one transaction, committed on exit
            self._db.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return out

    def _lookup(self, keys: set[str]) -> dict[str, LLMSample]:
        """The cached samples among `keys`, marked cached=True."""
        ordered = sorted(keys)
        found: dict[str, LLMSample] = {}
        with self._lock, _usable(self.path):
            for a in range(0, len(ordered), _LOOKUP_CHUNK):
                chunk = ordered[a : a + _LOOKUP_CHUNK]
                sql = (
                    "SELECT key, text, finish_reason, prompt_tokens, completion_tokens FROM samples "
                    f"WHERE key IN ({','.join('?' * len(chunk))})"
                )
                for key, text, finish, pt, ct in self._db.execute(sql, chunk):
                    found[key] = LLMSample(_from_db(text), finish, pt, ct, cached=True)
        return found

    def count(self) -> int:
        """Samples stored in the cache file (all models)."""
        with self._lock, _usable(self.path):
            return self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def close(self) -> None:
        """Close the database and the inner backend."""
        with self._lock:
            self._db.close()
        self.inner.close()


__all__ = ["CachedBackend", "BUSY_TIMEOUT"]
