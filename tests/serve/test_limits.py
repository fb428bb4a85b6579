"""Request size, auth before the body, content type, rows per request, and a responsive event loop."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.serve import _raw
from tests.serve.conftest import KEY, LIMIT

pytestmark = pytest.mark.timeout(30)
CHAT = "/v1/chat/completions"


def _chat_body(content: str, **extra) -> bytes:
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}
    return json.dumps(body).encode()


def test_a_too_long_content_length_is_413_before_the_body_is_read(limited):
    head = _raw.head(CHAT, {"Content-Type": _raw.JSON, "Content-Length": str(50 * LIMIT)})
    assert " 413 " in _raw.status(limited.port, head)  # no body sent: answered from the headers
    assert httpx.get(limited.url + "/models", timeout=5).status_code == 200


def test_a_chunked_body_is_cut_at_the_limit(limited):
    pieces = (b"x" * 65536 for _ in range(LIMIT // 65536 + 16))
    head = _raw.head(CHAT, {"Content-Type": _raw.JSON, "Transfer-Encoding": "chunked"})
    assert " 413 " in _raw.status(limited.port, head, _raw.chunked(pieces))
    assert httpx.get(limited.url + "/models", timeout=5).status_code == 200


def test_a_body_at_the_limit_is_read(limited):
    body = _chat_body("hi")
    r = httpx.post(
        limited.url + "/chat/completions",
        content=body + b" " * (LIMIT - len(body)),
        headers={"Content-Type": _raw.JSON},
        timeout=20,
    )
    assert r.status_code == 200, r.text


def test_a_wrong_key_is_401_before_the_body_is_read(keyed_limited):
    head = _raw.head(CHAT, {"Content-Type": _raw.JSON, "Content-Length": "1000000", "Authorization": "Bearer no"})
    assert " 401 " in _raw.status(keyed_limited.port, head)
    ok = httpx.post(
        keyed_limited.url + "/chat/completions",
        content=_chat_body("hi"),
        headers={"Content-Type": _raw.JSON, "Authorization": f"Bearer {KEY}"},
        timeout=20,
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_bodies_are_415(limited, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(limited.url + "/chat/completions", content=_chat_body("hi"), headers=headers, timeout=20)
    assert r.status_code == 415, r.text
    assert "application/json" in r.json()["error"]["message"]


def test_json_with_a_charset_is_accepted(limited):
    r = httpx.post(
        limited.url + "/chat/completions",
        content=_chat_body("hi"),
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=20,
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("prompts,n", [(3, 128), (300, 1)])
def test_rows_per_request_are_capped(limited, prompts, n):
    body = {"model": "tiny", "prompt": ["a"] * prompts, "n": n, "max_tokens": 1}
    r = httpx.post(limited.url + "/completions", json=body, timeout=20)
    assert r.status_code == 400, r.text
    assert "max_rows" in r.json()["error"]["message"] and str(prompts * n) in r.json()["error"]["message"]


def _models_latency_while(limited, post) -> tuple[float, int]:
    """The slowest /v1/models answer while `post()` runs in a thread, and post's status."""
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(post()), daemon=True)
    worker.start()
    slowest, t_end = 0.0, time.monotonic() + 1.0
    with httpx.Client(timeout=10) as client:
        while worker.is_alive() or time.monotonic() < t_end:
            t0 = time.perf_counter()
            client.get(limited.url + "/models").raise_for_status()
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.05)
    worker.join(20)
    return slowest, done[0]


def test_a_maximum_size_chat_body_does_not_stall_the_server(limited):
    body = _chat_body("hello world, this is a test. " * ((LIMIT - 200) // 29))
    assert len(body) <= LIMIT

    def post() -> int:
        return httpx.post(
            limited.url + "/chat/completions", content=body, headers={"Content-Type": _raw.JSON}, timeout=25
        ).status_code

    slowest, code = _models_latency_while(limited, post)
    assert code == 400 and slowest < 1.0


def test_tokenizing_a_large_request_does_not_stall_the_server(limited):
    # 128 prompts that each pass the character check: tokenized (off the loop) until one is too long
    prompt = "hello world, this is a test. " * 500
    body = json.dumps({"model": "tiny", "prompt": [prompt] * 128, "max_tokens": 1}).encode()
    assert len(body) <= LIMIT

    def post() -> int:
        return httpx.post(
            limited.url + "/completions", content=body, headers={"Content-Type": _raw.JSON}, timeout=25
        ).status_code

    slowest, code = _models_latency_while(limited, post)
    assert code == 400 and slowest < 1.0


def test_bad_limits_fail_before_loading(tmp_path):
    from instillm.errors import ConfigError
    from instillm.serve import create_app

    with pytest.raises(ConfigError, match="max_request_bytes.*max_rows"):
        create_app(tmp_path / "missing", max_request_bytes=0, max_rows=True)
    with pytest.raises(ConfigError, match="api_key: empty"):
        create_app(tmp_path / "missing", api_key="")
