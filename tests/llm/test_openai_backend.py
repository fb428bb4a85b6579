"""OpenAIBackend with the real openai client against `instillm serve` of the tiny model.

The served model and the local TransformersBackend load the same directory and template, so
greedy answers must be token for token the same.
"""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
import torch

from instillm.llm.backend import BackendConfig, LLMRequestError, chat, completion
from instillm.llm.local_backend import TransformersBackend
from instillm.llm.openai_backend import OpenAIBackend, _retry_after, split_tokens

CONVERSATIONS = [
    [{"role": "user", "content": "Reverse the word: stone"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}],
]
PROMPTS = ["Once upon a time", "def f(x):"]


@pytest.fixture(scope="module")
def served(tiny_server) -> OpenAIBackend:
    b = OpenAIBackend(
        BackendConfig(
            kind="openai",
            model=tiny_server.model,
            base_url=tiny_server.base_url,
            api_key=tiny_server.api_key,
            concurrency=2,
            timeout=60,
            max_retries=1,
            backoff=0.01,
        )
    )
    yield b
    b.close()


@pytest.fixture(scope="module")
def local(tiny_model_dir) -> TransformersBackend:
    torch.set_num_threads(1)
    return TransformersBackend(BackendConfig(kind="transformers", model=str(tiny_model_dir)))


def tuples(responses):
    return [[(s.text, s.finish_reason, s.prompt_tokens, s.completion_tokens) for s in r.samples] for r in responses]


def test_greedy_chat_and_completion_equal_the_local_backend(served, local):
    reqs = [chat(c, max_tokens=10) for c in CONVERSATIONS] + [completion(p, max_tokens=10) for p in PROMPTS]
    assert tuples(served.generate(reqs)) == tuples(local.generate(reqs))


def test_max_tokens_ends_with_length(served):
    s = served.generate([completion(PROMPTS[0], max_tokens=3)])[0].samples[0]
    assert s.finish_reason == "length" and s.completion_tokens == 3 and s.prompt_tokens > 0


def test_stop_string_cuts_like_the_local_backend(served, local):
    free = local.generate([chat(CONVERSATIONS[0], max_tokens=16)])[0].text
    assert len(free) > 4
    req = chat(CONVERSATIONS[0], max_tokens=16, stop=[free[3:5]])
    got = served.generate([req])[0].samples[0]
    assert got.finish_reason == "stop" and got.text == free[: free.find(free[3:5])]
    assert got.text == local.generate([req])[0].text


def test_n_samples(served):
    for req in (
        chat(CONVERSATIONS[1], n=2, temperature=1.0, max_tokens=8),
        completion(PROMPTS[1], n=2, temperature=1.0, seed=4, max_tokens=8),
    ):
        r = served.generate([req])[0]
        assert len(r.samples) == 2
        assert all(isinstance(s.text, str) and s.finish_reason in ("stop", "length") for s in r.samples)
        assert all(s.completion_tokens >= 1 for s in r.samples)


def test_an_unknown_model_is_a_request_error_without_retry(tiny_server):
    b = OpenAIBackend(
        BackendConfig(kind="openai", model="not-served", base_url=tiny_server.base_url, max_retries=3, backoff=0.01)
    )
    with pytest.raises(LLMRequestError, match="not-served") as e:
        b.generate([completion(PROMPTS[0], max_tokens=2)])
    assert e.value.status == 404
    b.close()


def test_split_tokens_sums_to_the_total_in_proportion():
    assert split_tokens(10, ["aaaa", "a"]) == [8, 2]
    assert split_tokens(7, ["", "", ""]) == [3, 2, 2]
    assert split_tokens(0, ["x"]) == [0]
    # shares 15.54, 23.31, 7.77, 54.38: the two spare tokens go to the largest remainders
    assert split_tokens(101, ["ab", "abc", "a", "abcdefg"]) == [16, 23, 8, 54]


def test_retry_after_headers():
    assert _retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert _retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert _retry_after(httpx.Headers({})) is None
    assert _retry_after(httpx.Headers({"retry-after": "soon"})) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < _retry_after(httpx.Headers({"retry-after": date})) <= 31


def test_seeded_sampling_over_http_equals_the_local_backend(served, local):
    # Both seed sample i with generation.sample_seed(seed, i): the same request samples the same
    # texts in-process and through `instillm serve`, and the samples differ from each other.
    reqs = [
        chat(CONVERSATIONS[0], max_tokens=12, temperature=1.0, n=3, seed=7),
        completion(PROMPTS[1], max_tokens=12, temperature=0.8, top_p=0.9, n=2, seed=3),
    ]
    got = [[s.text for s in r.samples] for r in served.generate(reqs)]
    want = [[s.text for s in r.samples] for r in local.generate(reqs)]
    assert got == want
    assert len(set(got[0])) > 1
