"""A client that leaves: its rows leave the running batch, its queued jobs are dropped."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(30)
MSGS = [{"role": "user", "content": "hi"}]


def _small_request_seconds(url: str) -> float:
    t0 = time.perf_counter()
    r = httpx.post(url + "/chat/completions", json={"model": "tiny", "messages": MSGS, "max_tokens": 2}, timeout=15)
    r.raise_for_status()
    return time.perf_counter() - t0


def _has_text(sse_line: str) -> bool:
    """Whether an SSE line of a chat stream carries generated text (not the role chunk)."""
    squashed = sse_line.replace(" ", "")
    return '"content":"' in squashed and '"content":""' not in squashed


def _abandon_after_first_content(url: str, body: dict) -> None:
    """Open a stream, read until the first generated text arrives, then hang up."""
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=15) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if _has_text(line))


def test_an_abandoned_stream_stops_being_decoded(limited):
    # 128 rows x 900 tokens: ~40 s of decoding on a CPU if nobody stops it
    body = {"model": "tiny", "messages": MSGS, "n": 128, "max_tokens": 900, "temperature": 0, "stream": True}
    decoded, gone = limited.stats.decoded_tokens, limited.stats.cancelled_rows
    _abandon_after_first_content(limited.url, body)
    assert _small_request_seconds(limited.url) < 10
    assert limited.stats.cancelled_rows - gone == 128
    assert limited.stats.decoded_tokens - decoded < 32 * 100  # of 128 * 900: stopped within steps


def _leave_while_queued(url: str) -> None:
    """One plain and one streamed request that give up after 0.5 s (queued behind a long one)."""
    body = {"model": "tiny", "prompt": "left", "max_tokens": 7, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    with httpx.stream("POST", url + "/completions", json={**body, "stream": True}, timeout=5) as r:
        assert r.status_code == 200
        time.sleep(0.5)  # nothing generated yet; hang up


@pytest.fixture(scope="module")
def serial(tiny_model_dir):
    """A server decoding one row at a time: a second request queues behind the first."""
    from tests.serve.conftest import _start

    handle, server = _start(tiny_model_dir, max_batch_size=1)
    yield server
    handle.stop()


def test_queued_jobs_of_clients_that_left_are_not_decoded(serial):
    stats = serial.stats
    requests, dropped = stats.requests, stats.dropped_jobs
    body = {"model": "tiny", "messages": MSGS, "n": 128, "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", serial.url + "/chat/completions", json=body, timeout=15) as busy:
        lines = busy.iter_lines()  # kept: closing the iterator would close the connection
        next(line for line in lines if _has_text(line))
        _leave_while_queued(serial.url)  # while the long stream is decoded
    assert _small_request_seconds(serial.url) < 10  # queued after the two that left
    assert stats.dropped_jobs - dropped == 2
    assert stats.requests - requests == 2  # the long one (until it left) and the small one


def test_a_small_request_finds_room_beside_a_large_one(limited):
    """Continuous batching keeps rows free for others: a 2-token answer does not wait for 128 x 900 tokens."""
    body = {"model": "tiny", "messages": MSGS, "n": 128, "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", limited.url + "/chat/completions", json=body, timeout=15) as busy:
        lines = busy.iter_lines()
        next(line for line in lines if _has_text(line))
        assert _small_request_seconds(limited.url) < 5
        assert next(line for line in lines if _has_text(line))  # the large one is still being decoded


# --------------------------------------------------------------------------------------------
# the generator's should_stop and the engine's cancel, without HTTP


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    from instillm.llm.generation import Generator
    from instillm.models.loading import load_model, load_tokenizer

    return Generator(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir))


def _ids(generator, *prompts: str) -> list[list[int]]:
    return [generator.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def test_should_stop_ends_a_row_at_the_next_step_and_spares_the_others(generator):
    from instillm.llm.generation import GenerateOptions

    ids, opts = _ids(generator, "a b c", "d e"), GenerateOptions(max_new_tokens=12)
    steps = {0: 0, 1: 0}

    def on_token(i: int, token, finish) -> None:
        steps[i] += 1

    outs = generator.generate_ids(ids, opts, on_token=on_token, should_stop=lambda i: i == 0 and steps[0] >= 3)
    assert len(outs[0].token_ids) == 4 and outs[0].finish_reason == "length"  # the step already computed, no more
    assert outs[1].token_ids == generator.generate_ids([ids[1]], opts)[0].token_ids
    assert len(outs[1].token_ids) == 12
    assert [o.token_ids for o in generator.generate_ids(ids, opts, should_stop=lambda i: True)] == [[], []]


def test_a_job_cancelled_while_decoded_leaves_the_batch(generator):
    from instillm.llm.generation import GenerateOptions
    from instillm.serve.engine import Engine, Job

    ids, opts = _ids(generator, "a b c", "d e"), GenerateOptions(max_new_tokens=40)
    engine = Engine(generator, batch_wait_ms=300)
    engine.start()
    gone = Job([ids[0]], [0], opts, on_delta=lambda row, text: gone.cancel())  # leaves at its first text
    kept = Job([ids[1]], [0], opts)
    engine.submit(gone), engine.submit(kept)
    assert kept.future.result(60)[0].token_ids == generator.generate_ids([ids[1]], opts)[0].token_ids
    engine.stop()
    assert len(gone.future.result(1)[0].token_ids) < 40
    assert engine.stats.cancelled_rows == 1 and engine.stats.requests == 2 and engine.stats.generate_calls == 1
