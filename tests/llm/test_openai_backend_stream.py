"""OpenAIBackend.stream with the real openai client against `instillm serve` of the tiny model: the streamed
text is the text answered whole (greedy), stop strings and max_tokens included; errors as in `generate`."""

from __future__ import annotations

import socket
import time

import pytest

from instillm.errors import ConfigError
from instillm.llm.backend import BackendConfig, LLMRequestError, LLMUnavailableError, chat, completion
from instillm.llm.openai_backend import OpenAIBackend

CONVERSATIONS = [
    [{"role": "user", "content": "Reverse the word: stone"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}],
]


def backend(base_url: str, model: str = "tiny", max_retries: int = 1) -> OpenAIBackend:
    config = dict(kind="openai", model=model, base_url=base_url, timeout=60, max_retries=max_retries, backoff=0.01)
    return OpenAIBackend(BackendConfig(**config))


@pytest.fixture(scope="module")
def served(tiny_server):
    b = backend(tiny_server.base_url, tiny_server.model)
    yield b
    b.close()


def test_greedy_streamed_text_equals_the_whole_answer(served):
    for req in [chat(c, max_tokens=16) for c in CONVERSATIONS] + [completion("Once upon a time", max_tokens=16)]:
        deltas = list(served.stream(req))
        assert len(deltas) > 1 and all(deltas)  # pieces as they come, never an empty one
        assert "".join(deltas) == served.generate([req])[0].text


def test_stop_strings_and_max_tokens_as_in_the_whole_answer(served):
    free = served.generate([chat(CONVERSATIONS[0], max_tokens=16)])[0].text
    assert len(free) > 4
    stopped = chat(CONVERSATIONS[0], max_tokens=16, stop=[free[3:5]])
    assert "".join(served.stream(stopped)) == served.generate([stopped])[0].text == free[: free.find(free[3:5])]
    short = chat(CONVERSATIONS[0], max_tokens=3)
    whole = served.generate([short])[0].samples[0]
    assert whole.finish_reason == "length" and "".join(served.stream(short)) == whole.text


def test_one_sample_only(served):
    with pytest.raises(ConfigError, match="n=2"):
        next(served.stream(chat(CONVERSATIONS[0], n=2, temperature=1.0)))


def test_an_unknown_model_is_a_request_error_without_retry(tiny_server):
    b = backend(tiny_server.base_url, "not-served", max_retries=3)
    with pytest.raises(LLMRequestError, match="not-served") as e:
        next(b.stream(chat(CONVERSATIONS[0], max_tokens=2)))
    assert e.value.status == 404
    b.close()


def test_nothing_listening_is_unavailable_after_the_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    b = backend(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(LLMUnavailableError, match="gave up after 2 attempt.*connection error"):
        list(b.stream(chat(CONVERSATIONS[0], max_tokens=2)))
    b.close()


def test_closing_the_stream_stops_the_servers_decoding(served, tiny_server):
    stats = tiny_server.app.state.stats
    before = stats.cancelled_rows
    stream = served.stream(chat([{"role": "user", "content": "hi"}], max_tokens=900))
    assert next(stream)
    stream.close()
    deadline = time.monotonic() + 10
    while stats.cancelled_rows == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats.cancelled_rows == before + 1
