"""OpenAIBackend against a misbehaving endpoint: what is retried, how often, how long it waits."""

from __future__ import annotations

import time
import uuid

import pytest

from instillm.llm.backend import (
    BackendConfig,
    LLMRequestError,
    LLMResponseError,
    LLMUnavailableError,
    chat,
    completion,
)
from instillm.llm.cache import CachedBackend
from instillm.llm.openai_backend import SHAPE_RETRIES, OpenAIBackend
from tests.llm.fault_server import FaultServer, scripted


@pytest.fixture(scope="module")
def faults():
    server = FaultServer().start()
    yield server
    server.stop()


def backend(server: FaultServer, **overrides) -> OpenAIBackend:
    settings = {
        "kind": "openai",
        "model": "scripted",
        "base_url": server.base_url,
        "max_retries": 3,
        "backoff": 0.01,
        "max_backoff": 0.05,
        "timeout": 5.0,
        "concurrency": 4,
    }
    return OpenAIBackend(BackendConfig(**(settings | overrides)))


def rid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.mark.parametrize("first", ["500", "503", "badjson", "truncated", "html", "empty", "null"])
def test_one_failure_then_ok_is_retried_once(faults, first):
    i = rid()
    resp = backend(faults).generate([chat([{"role": "user", "content": scripted(i, first, "ok")}])])[0]
    assert resp.text == f"answer:{i}:0"
    assert faults.attempts[i] == 2 and faults.answered[i] == 1


def test_completion_requests_are_retried_too(faults):
    i = rid()
    resp = backend(faults).generate([completion(scripted(i, "500", "500", "ok"))])[0]
    assert resp.text == f"answer:{i}:0" and faults.attempts[i] == 3


def test_429_waits_for_retry_after(faults):
    i = rid()
    b = backend(faults)
    resp = b.generate([chat([{"role": "user", "content": scripted(i, "429:1", "ok")}])])[0]
    assert resp.text == f"answer:{i}:0"
    assert faults.attempts[i] == 2
    waited = faults.times[i][1] - faults.times[i][0]
    assert 0.9 <= waited < 4.0  # Retry-After: 1 (the jittered backoff alone is <= 0.05 s)


def test_a_response_slower_than_the_timeout_is_retried(faults):
    i = rid()
    t0 = time.monotonic()
    resp = backend(faults, timeout=0.5).generate([chat([{"role": "user", "content": scripted(i, "slow:2", "ok")}])])[0]
    assert resp.text == f"answer:{i}:0" and faults.attempts[i] == 2
    assert time.monotonic() - t0 < 1.9  # gave up on the slow answer instead of waiting it out


def test_always_500_gives_up_after_max_retries_plus_one_attempts(faults):
    i = rid()
    with pytest.raises(LLMUnavailableError) as e:
        backend(faults, max_retries=2).generate([chat([{"role": "user", "content": scripted(i, "500")}])])
    assert faults.attempts[i] == 3
    message = str(e.value)
    assert "scripted" in message and faults.base_url in message and "HTTP 500" in message and "3 attempt" in message


def test_timeouts_exhausted_name_the_timeout(faults):
    i = rid()
    with pytest.raises(LLMUnavailableError, match="timed out after 0.3 s"):
        backend(faults, timeout=0.3, max_retries=1).generate([completion(scripted(i, "slow:1"))])
    assert faults.attempts[i] == 2


def test_connection_refused_is_unavailable(faults):
    b = OpenAIBackend(
        BackendConfig(
            kind="openai", model="m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff=0.01, timeout=1.0
        )
    )
    with pytest.raises(LLMUnavailableError, match="connection error"):
        b.generate([completion("x")])


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_raise_request_error_without_retry(faults, status):
    i = rid()
    with pytest.raises(LLMRequestError) as e:
        backend(faults).generate([chat([{"role": "user", "content": scripted(i, str(status), "ok")}])])
    assert e.value.status == status and f"scripted {status}" in str(e.value)
    assert faults.attempts[i] == 1


@pytest.mark.parametrize("action,n", [("empty", 1), ("null", 1), ("short", 2)])
def test_unusable_200_raises_response_error_after_bounded_retries(faults, action, n):
    i = rid()
    with pytest.raises(LLMResponseError):
        backend(faults).generate([chat([{"role": "user", "content": scripted(i, action)}], n=n, temperature=0.5)])
    assert faults.attempts[i] == SHAPE_RETRIES + 1


def test_malformed_json_every_time_is_unavailable_after_all_retries(faults):
    i = rid()
    with pytest.raises(LLMUnavailableError, match="malformed"):
        backend(faults, max_retries=2).generate([chat([{"role": "user", "content": scripted(i, "badjson")}])])
    assert faults.attempts[i] == 3


def test_concurrency_is_bounded_and_results_keep_input_order(faults):
    ids = [rid() for _ in range(8)]
    reqs = [completion(scripted(x, f"slow:{0.4 - 0.04 * k:.2f}")) for k, x in enumerate(ids)]
    progress, arrived = [], []
    out = backend(faults, concurrency=3).generate(
        reqs, progress=progress.append, on_response=lambda i, r: arrived.append(i)
    )
    assert [r.text for r in out] == [f"answer:{x}:0" for x in ids]
    assert faults.max_overlap(ids) == 3
    assert sum(progress) == 8 and sorted(arrived) == list(range(8))


def test_a_failure_mid_batch_raises_but_reports_what_was_answered(faults):
    ids = [rid() for _ in range(6)]
    reqs = [completion(scripted(x, "400" if k == 2 else "ok")) for k, x in enumerate(ids)]
    arrived = {}
    with pytest.raises(LLMRequestError):
        backend(faults, concurrency=2).generate(reqs, on_response=lambda i, r: arrived.__setitem__(i, r.text))
    assert 2 not in arrived
    for i, text in arrived.items():
        assert text == f"answer:{ids[i]}:0"
    # every request the server answered was handed to on_response: nothing answered was dropped
    assert {ids[i] for i in arrived} == {x for x in ids if faults.answered[x]}


def test_cache_after_a_failed_run_answers_every_request_exactly_once(faults, tmp_path):
    ids = [rid() for _ in range(6)]
    # request 3 fails all 3 attempts of run 1 (max_retries=2), then succeeds on its 5th attempt in run 2
    scripts = [["ok"] if k != 3 else ["500"] * 4 + ["ok"] for k in range(6)]
    reqs = [chat([{"role": "user", "content": scripted(x, *s)}], n=2, temperature=0.7) for x, s in zip(ids, scripts)]
    path = tmp_path / "cache.sqlite"
    cached = CachedBackend(backend(faults, max_retries=2, concurrency=2), path)
    with pytest.raises(LLMUnavailableError):
        cached.generate(reqs)
    answered_in_run1 = {x for x in ids if faults.answered[x]}
    assert cached.count() == 2 * len(answered_in_run1)
    cached.close()

    cached = CachedBackend(backend(faults, max_retries=2, concurrency=2), path)
    out = cached.generate(reqs)
    assert [faults.answered[x] for x in ids] == [1] * 6  # none lost, none answered twice
    assert cached.count() == 12
    for x, r in zip(ids, out):
        assert [s.text for s in r.samples] == [f"answer:{x}:0", f"answer:{x}:1"]
        assert all(s.cached == (x in answered_in_run1) for s in r.samples)
    before = sum(faults.attempts[x] for x in ids)
    again = cached.generate(reqs)
    assert sum(faults.attempts[x] for x in ids) == before
    assert [[s.text for s in r.samples] for r in again] == [[s.text for s in r.samples] for r in out]
    assert all(s.cached for r in again for s in r.samples)
