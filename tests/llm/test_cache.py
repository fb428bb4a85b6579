"""CachedBackend: what it sends, what it stores, what it returns from disk (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import threading
import uuid

import pytest

from instillm.errors import ConfigError, DataError
from instillm.llm.backend import BackendConfig, LLMRequestError, LLMResponse, LLMSample, chat, completion, make_backend
from instillm.llm.cache import CachedBackend
from instillm.llm.openai_backend import OpenAIBackend
from tests.llm.fault_server import PROMPT_TOKENS, TOKENS_PER_CHOICE, FaultServer, scripted


@pytest.fixture(scope="module")
def server():
    s = FaultServer().start()
    yield s
    s.stop()


def config(server: FaultServer, model: str = "teacher", **overrides) -> BackendConfig:
    return BackendConfig(
        **(
            {
                "kind": "openai",
                "model": model,
                "base_url": server.base_url,
                "max_retries": 1,
                "backoff": 0.01,
                "concurrency": 4,
            }
            | overrides
        )
    )


def cached(server: FaultServer, path, model: str = "teacher") -> CachedBackend:
    return CachedBackend(OpenAIBackend(config(server, model)), path)


def rid() -> str:
    return uuid.uuid4().hex[:10]


def test_second_run_sends_nothing_and_returns_cached_samples(server, tmp_path):
    ids = [rid() for _ in range(3)]
    reqs = [
        chat([{"role": "user", "content": scripted(ids[0])}], n=2, temperature=0.8),
        completion(scripted(ids[1]), max_tokens=5),
        chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": scripted(ids[2])}]),
    ]
    b = cached(server, tmp_path / "c.sqlite")
    first = b.generate(reqs)
    assert not any(s.cached for r in first for s in r.samples)
    assert [server.attempts[x] for x in ids] == [1, 1, 1]
    progress = []
    second = b.generate(reqs, progress=progress.append)
    assert [server.attempts[x] for x in ids] == [1, 1, 1]
    assert sum(progress) == 3
    assert all(s.cached for r in second for s in r.samples)
    strip = lambda rs: [
        [(s.text, s.finish_reason, s.prompt_tokens, s.completion_tokens) for s in r.samples] for r in rs
    ]  # noqa: E731
    assert strip(second) == strip(first)
    assert second[1].samples[0].prompt_tokens == PROMPT_TOKENS
    assert second[1].samples[0].completion_tokens == TOKENS_PER_CHOICE
    assert b.count() == 4


def test_partial_n_sends_only_the_missing_samples(server, tmp_path):
    i = rid()
    b = cached(server, tmp_path / "c.sqlite")
    text = scripted(i)
    b.generate([chat([{"role": "user", "content": text}], n=2, temperature=0.9)])
    out = b.generate([chat([{"role": "user", "content": text}], n=4, temperature=0.9)])[0]
    assert [body["n"] for body in server.bodies[i]] == [2, 2]
    # positions 0 and 1 of the second answer are stored as samples 2 and 3
    assert [s.text for s in out.samples] == [f"answer:{i}:{k}" for k in (0, 1, 0, 1)]
    assert [s.cached for s in out.samples] == [True, True, False, False]
    again = b.generate([chat([{"role": "user", "content": text}], n=3, temperature=0.9)])[0]
    assert server.attempts[i] == 2 and all(s.cached for s in again.samples)
    assert b.count() == 4


def test_seeded_partial_n_resends_from_sample_zero_and_stores_the_missing_positions(server, tmp_path):
    i = rid()
    b = cached(server, tmp_path / "c.sqlite")
    b.generate([completion(scripted(i), n=2, temperature=0.9, seed=3)])
    out = b.generate([completion(scripted(i), n=4, temperature=0.9, seed=3)])[0]
    assert [body["n"] for body in server.bodies[i]] == [2, 4]
    assert [s.text for s in out.samples] == [f"answer:{i}:{k}" for k in range(4)]
    assert b.count() == 4


def test_different_params_or_model_are_different_entries(server, tmp_path):
    i = rid()
    path = tmp_path / "c.sqlite"
    b = cached(server, path)
    text = scripted(i)
    variants = [
        chat([{"role": "user", "content": text}]),
        chat([{"role": "user", "content": text}], temperature=0.5),
        chat([{"role": "user", "content": text}], max_tokens=7),
        chat([{"role": "user", "content": text}], stop=["\n"]),
        chat([{"role": "user", "content": text}], seed=1, temperature=0.5),
        completion(text),
    ]
    for k, r in enumerate(variants, start=1):
        b.generate([r])
        assert server.attempts[i] == k
    other = cached(server, path, model="another-teacher")
    other.generate([variants[0]])
    assert server.attempts[i] == len(variants) + 1
    assert [body["model"] for body in server.bodies[i]][-2:] == ["teacher", "another-teacher"]
    assert other.count() == len(variants) + 1


def test_cache_persists_across_instances(server, tmp_path):
    i = rid()
    path = tmp_path / "nested" / "c.sqlite"
    req = completion(scripted(i), n=3, temperature=1.0)
    b = cached(server, path)
    first = b.generate([req])[0]
    b.close()
    reopened = make_backend(config(server, cache=str(path)))
    assert isinstance(reopened, CachedBackend)
    out = reopened.generate([req])[0]
    assert server.attempts[i] == 1
    assert [s.text for s in out.samples] == [s.text for s in first.samples]
    assert all(s.cached for s in out.samples)
    reopened.close()


def test_identical_requests_in_one_batch_are_sent_once(server, tmp_path):
    i = rid()
    b = cached(server, tmp_path / "c.sqlite")
    req = chat([{"role": "user", "content": scripted(i)}], temperature=0.5)
    arrived = []
    out = b.generate(
        [req, chat([{"role": "user", "content": scripted(i)}], temperature=0.5, n=2), req],
        on_response=lambda k, r: arrived.append(k),
    )
    assert server.attempts[i] == 1 and server.bodies[i][0]["n"] == 2
    assert [len(r.samples) for r in out] == [1, 2, 1]
    assert out[0].text == out[2].text == out[1].samples[0].text
    assert sorted(arrived) == [0, 1, 2]


def test_answers_are_on_disk_before_the_batch_fails(server, tmp_path):
    ids = [rid() for _ in range(4)]
    reqs = [completion(scripted(x, "400" if k == 3 else "ok")) for k, x in enumerate(ids)]
    path = tmp_path / "c.sqlite"
    b = CachedBackend(OpenAIBackend(config(server, concurrency=1)), path)
    with pytest.raises(LLMRequestError):
        b.generate(reqs)
    # concurrency 1: requests 0-2 were answered before 3 failed, and each was committed then
    reader = cached(server, path)
    assert reader.count() == 3
    out = reader.generate(reqs[:3])
    assert all(r.samples[0].cached for r in out) and [server.attempts[x] for x in ids] == [1, 1, 1, 1]


def test_two_instances_on_one_file_write_concurrently(server, tmp_path):
    path = tmp_path / "c.sqlite"
    a, b = cached(server, path), cached(server, path)
    batches = [[completion(scripted(rid())) for _ in range(10)] for _ in range(2)]
    errors = []

    def run(backend, batch):
        try:
            backend.generate(batch)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(x, batch)) for x, batch in zip((a, b), batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cached(server, path).count() == 20


def test_a_directory_as_cache_path_is_a_config_error(server, tmp_path):
    with pytest.raises(ConfigError, match="backend.cache"):
        cached(server, tmp_path)


# ---------------------------------------------------------------- damaged files, strange text


class _Fixed:
    """An inner backend without HTTP: every sample of every request is `text`."""

    model = "fixed"

    def __init__(self, text: str = "fixed answer") -> None:
        self.text, self.sent = text, 0

    def generate(self, requests):
        self.sent += len(requests)
        return [
            LLMResponse(tuple(LLMSample(self.text, "stop", 1, 1) for _ in range(r.params.n)), self.model)
            for r in requests
        ]

    def close(self) -> None:
        pass


def test_a_file_that_is_not_a_database_is_an_error_naming_it_and_the_fix(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not sqlite\n" * 500)
    with pytest.raises(DataError, match=rf"backend.cache: {path} is not a usable response cache.*delete it"):
        CachedBackend(_Fixed(), path)
    assert path.read_bytes() == b"this is not sqlite\n" * 500  # left as it was


def test_a_malformed_database_is_an_error_naming_it_and_the_fix(tmp_path):
    path = tmp_path / "c.sqlite"
    b = CachedBackend(_Fixed("t" * 300), path)
    reqs = [completion(f"prompt {k}") for k in range(300)]
    b.generate(reqs)
    b.close()
    raw = bytearray(path.read_bytes())
    raw[4096 * 2 : 4096 * 4] = b"\xab" * (4096 * 2)  # pages 3-4 overwritten: the header still reads
    path.write_bytes(bytes(raw))
    with pytest.raises(
        DataError,
        match=rf"{path} is not a usable response cache \(database disk image is "
        r"malformed\); delete it or move it aside",
    ):
        CachedBackend(_Fixed(), path).generate(reqs)


def test_a_sqlite_file_of_something_else_is_an_error(tmp_path):
    import sqlite3

    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE samples (id INTEGER, label TEXT)")
    with pytest.raises(DataError, match=r"a sqlite file of something else: table samples has columns \['id'"):
        CachedBackend(_Fixed(), path)


def test_answers_holding_lone_surrogates_are_stored_and_returned(tmp_path):
    text = "half an emoji \ud83d, a low one \udc00, and \x00 nul"
    b = CachedBackend(_Fixed(text), tmp_path / "c.sqlite")
    assert b.generate([completion("p")])[0].text == text
    b.close()
    inner = _Fixed("other")
    again = CachedBackend(inner, tmp_path / "c.sqlite")
    out = again.generate([completion("p")])[0]
    assert out.text == text and out.samples[0].cached and inner.sent == 0
