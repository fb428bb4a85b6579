"""`instillm serve` over real HTTP with the official openai client, against a real tiny model.

Most tests serve a "chaotic" copy of the tiny model (2-D weights redrawn from N(0, 0.1), as in
tests/test_generation.py): the default init repeats one token forever, which would make
"served text == generator text" and "batched == alone" nearly vacuous. References come from a
separate `Generator` over the same files, one prompt per call.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch

from instillm.data.render import RenderConfig, Renderer
from instillm.llm.generation import GenerateOptions, Generator
from instillm.models.loading import load_model, load_tokenizer
from instillm.serve import create_app, serve, start_in_thread
from instillm.serve.engine import BatchEngine, Engine, Job
from tests.llm.chaotic import make_chaotic

NAME = "chaotic"


@pytest.fixture(scope="module")
def chaotic_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chaotic") / "model"
    shutil.copytree(tiny_model_dir, out)
    make_chaotic(load_model(out, dtype=torch.float32)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(chaotic_dir: Path):
    app = create_app(chaotic_dir, model_name=NAME, batch_wait_ms=20)
    handle = start_in_thread(app)
    yield handle, app
    handle.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0].base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(chaotic_dir: Path) -> Generator:
    tok = load_tokenizer(chaotic_dir)
    return Generator(load_model(chaotic_dir), tok, Renderer(tok, RenderConfig(max_length=1 << 30)))


def _alone(reference: Generator, prompt: str, max_new_tokens: int, **kw):
    return reference.generate_texts([prompt], GenerateOptions(max_new_tokens=max_new_tokens, **kw))[0]


def _chat_prompt(reference: Generator, content: str) -> str:
    return reference.render_prompts([[{"role": "user", "content": content}]])[0]


# --------------------------------------------------------------------------------------------
# round trips


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_chat_equals_generator_greedy(client, reference):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    r = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=12, temperature=0)
    want = reference.generate_chat([msgs], GenerateOptions(max_new_tokens=12))[0]
    assert r.object == "chat.completion" and r.model == NAME and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text and want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == want.prompt_tokens
    assert r.usage.completion_tokens == want.completion_tokens
    assert r.usage.total_tokens == want.prompt_tokens + want.completion_tokens


def test_content_as_text_parts_equals_a_string(client):
    parts = [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]
    a = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": parts}], max_tokens=6, temperature=0
    )
    b = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=6, temperature=0
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_max_completion_tokens_is_max_tokens(client):
    msgs = [{"role": "user", "content": "Count."}]
    a = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=6, temperature=0)
    b = client.chat.completions.create(model=NAME, messages=msgs, max_completion_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_completions_list_of_prompts(client, reference):
    prompts = ["The cat", "Once upon a time there was"]
    r = client.completions.create(model=NAME, prompt=prompts, max_tokens=10, temperature=0)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    wants = [_alone(reference, p, 10) for p in prompts]
    assert [c.text for c in r.choices] == [w.text for w in wants]
    assert r.usage.prompt_tokens == sum(w.prompt_tokens for w in wants)
    assert r.usage.completion_tokens == sum(w.completion_tokens for w in wants)


def test_the_shared_tiny_server_fixture_answers(tiny_server):
    assert tiny_server.base_url.startswith("http://127.0.0.1:") and tiny_server.api_key is None
    c = openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0)
    r = c.chat.completions.create(
        model=tiny_server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1


# --------------------------------------------------------------------------------------------
# streaming


def test_stream_chat_reassembles_to_the_non_streamed_text(client):
    msgs = [{"role": "user", "content": "Tell me a story about a dog."}]
    full = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=msgs, max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    text = "".join(d.content or "" for d in deltas)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason and not any(finishes[:-1])
    # tokens are streamed as generated: more content pieces than the role and last chunks
    assert sum(bool(d.content) for d in deltas[:-1]) >= 4
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_stream_completions_with_n_reassembles(client):
    kw = dict(model=NAME, prompt="A list of fruits:", max_tokens=12, temperature=0.9, seed=3, n=2)
    full = client.completions.create(**kw)
    texts = {0: "", 1: ""}
    for chunk in client.completions.create(**kw, stream=True):
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            texts[c.index] += c.text
    assert [texts[0], texts[1]] == [c.text for c in full.choices]


def _stop_across_tokens(reference: Generator, prompt: str) -> tuple[str, str]:
    """A stop string that spans two generated tokens (its start is streamed before its end)."""
    out = _alone(reference, prompt, 16)
    for k in range(2, len(out.token_ids) - 1):
        cut = len(reference.tokenizer.decode(out.token_ids[:k]))
        stop = out.text[cut - 2 : cut + 1]
        if len(stop) == 3 and out.text.find(stop) == cut - 2 and stop.isalpha():
            return stop, out.text[: cut - 2]
    raise AssertionError(f"no stop string across tokens in {out.text!r}")


def test_stream_honours_stop_strings(client, reference):
    prompt = "Seven eight nine"
    stop, want = _stop_across_tokens(reference, prompt)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=NAME, prompt=prompt, max_tokens=16, temperature=0, stop=[stop], stream=True
        )
    )
    assert streamed == want


# --------------------------------------------------------------------------------------------
# sampling, stopping, lengths


def test_n3_sampling_gives_three_seeded_choices(client):
    kw = dict(
        model=NAME,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=10,
        temperature=1.0,
        top_p=0.95,
        n=3,
        seed=7,
    )
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len(set(texts)) == 3  # distinct seeds per sample
    assert texts == [c.message.content for c in b.choices]  # same seed, same samples


def test_stop_string_is_honoured(client, reference):
    prompt = _chat_prompt(reference, "Write words.")
    text = _alone(reference, prompt, 16).text
    stop = text[5:8]
    r = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Write words."}], max_tokens=16, temperature=0, stop=stop
    )
    assert r.choices[0].message.content == text[: text.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_finish_reason_length_when_max_tokens_is_hit(client, reference):
    want = _alone(reference, "Numbers:", 5)
    assert want.finish_reason == "length"  # the chaotic model does not end this early
    r = client.completions.create(model=NAME, prompt="Numbers:", max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


# --------------------------------------------------------------------------------------------
# batching


def test_32_concurrent_clients_are_batched_and_equal_alone(client, server, reference):
    app = server[1]
    prompts = [f"Request {i}: " + "word " * (i % 7) for i in range(32)]
    results: dict[int, str] = {}
    barrier = threading.Barrier(32)

    def one(i: int) -> None:
        barrier.wait()
        r = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=8, temperature=0)
        results[i] = r.choices[0].text

    calls_before, requests_before = app.state.stats.generate_calls, app.state.stats.requests
    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(32))
    assert [results[i] for i in range(32)] == [_alone(reference, p, 8).text for p in prompts]
    stats = app.state.stats
    assert stats.requests - requests_before == 32
    assert stats.generate_calls - calls_before < 32 and stats.max_requests_per_call > 1


@pytest.mark.parametrize("engine_class", [Engine, BatchEngine])
def test_engine_groups_queued_jobs_up_to_max_batch_size(reference, engine_class):
    ids = [reference.tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("a b", "c d e", "f")]
    opts = GenerateOptions(max_new_tokens=4)
    for max_batch in (32, 1):
        engine = engine_class(reference, max_batch_size=max_batch, batch_wait_ms=500)
        engine.start()
        futures = [engine.submit(Job([x], [0], opts)) for x in ids]
        outs = [f.result(60)[0].text for f in futures]
        engine.stop()
        assert engine.stats.requests == 3
        assert outs == [reference.generate_ids([x], opts)[0].text for x in ids]
        if engine_class is BatchEngine:  # one Generator call per batch
            assert engine.stats.generate_calls == (1 if max_batch == 32 else 3)
        else:  # one running batch, never wider than max_batch_size
            assert engine.stats.max_rows_per_step == min(max_batch, 3) and engine.stats.generate_calls == 1


def test_a_cancelled_job_is_skipped_and_the_engine_keeps_serving(reference):
    ids = reference.tokenizer("a b c", add_special_tokens=False)["input_ids"]
    opts = GenerateOptions(max_new_tokens=3)
    engine = Engine(reference, batch_wait_ms=300)
    engine.start()
    gone, kept = Job([ids], [0], opts), Job([ids], [0], opts)
    engine.submit(gone)
    assert gone.future.cancel()  # still queued: the worker is waiting for more jobs
    engine.submit(kept)
    assert kept.future.result(60)[0].text == reference.generate_ids([ids], opts)[0].text
    engine.stop()
    assert engine.stats.requests == 1


def test_on_token_reports_exactly_the_output_tokens(reference):
    ids = [reference.tokenizer(p, add_special_tokens=False)["input_ids"] for p in ("x y z", "hello")]
    seen: dict[int, list] = {0: [], 1: []}
    finishes: dict[int, str] = {}

    def on_token(i, token, finish):
        assert i not in finishes  # nothing after a prompt finished
        if token is not None:
            seen[i].append(token)
        if finish is not None:
            finishes[i] = finish

    outs = reference.generate_ids(ids, GenerateOptions(max_new_tokens=6), on_token=on_token)
    assert [seen[0], seen[1]] == [o.token_ids for o in outs]
    assert [finishes[0], finishes[1]] == [o.finish_reason for o in outs]


# --------------------------------------------------------------------------------------------
# validation and auth


BAD = [
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5000}, "max_tokens"),  # the tiny model has 1024 positions
    ({"stop": [""]}, "stop"),
    ({"logprobs": True}, "logprobs"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
]


@pytest.mark.parametrize("change,field", BAD, ids=[f for _, f in BAD])
def test_bad_chat_requests_are_400_naming_the_field(server, change, field):
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    r = httpx.post(server[0].base_url + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert field in err["message"] and err["param"].startswith(field.split(".")[0])


def test_every_problem_is_reported_at_once(server):
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": -1, "n": 0}
    r = httpx.post(server[0].base_url + "/chat/completions", json=body, timeout=30)
    message = r.json()["error"]["message"]
    assert r.status_code == 400 and "temperature" in message and "n:" in message


def test_bad_completion_prompt_and_unknown_model(client):
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model=NAME, prompt=[], max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="not-served") as e:
        client.completions.create(model="not-served", prompt="hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"


@pytest.fixture(scope="module")
def keyed(tiny_model_dir: Path):
    handle = start_in_thread(create_app(tiny_model_dir, api_key="sekret", model_name="tiny"))
    yield handle
    handle.stop()


def test_api_key_is_required_when_set(keyed):
    msgs = [{"role": "user", "content": "hi"}]
    r = httpx.get(keyed.base_url + "/models", timeout=30)
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    wrong = openai.OpenAI(base_url=keyed.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model="tiny", messages=msgs, max_tokens=2)
    assert e.value.body["code"] == "invalid_api_key"
    right = openai.OpenAI(base_url=keyed.base_url, api_key="sekret", max_retries=0)
    assert right.chat.completions.create(model="tiny", messages=msgs, max_tokens=2).choices


def test_default_host_is_loopback(server):
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(start_in_thread).parameters["host"].default == "127.0.0.1"
    from instillm.cli import serve_cmd

    assert inspect.signature(serve_cmd).parameters["host"].default.default == "127.0.0.1"
    assert server[0].base_url.startswith("http://127.0.0.1:")


def test_bad_settings_fail_before_loading(tmp_path):
    from instillm.errors import ConfigError

    with pytest.raises(ConfigError, match="max_batch_size.*batch_wait_ms"):
        create_app(tmp_path / "missing", max_batch_size=0, batch_wait_ms=-1)


def test_cli_serve_prints_the_url_and_serves(tiny_model_dir, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instillm.cli",
            "serve",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--model-name",
            "cli-tiny",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.3)
        assert r.json()["data"][0]["id"] == "cli-tiny"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/v1" in output


def test_the_served_model_runs_where_device_says(tiny_server):
    # one loader (models.loading.load_local) places the model: "auto" is CUDA when available
    import torch

    assert tiny_server.app.state.device == ("cuda:0" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------
# continuous batching


def test_mixed_jobs_joining_a_running_batch_equal_alone(reference):
    """Different budgets, temperatures, stop strings and prompt lengths share decode steps."""
    texts = ["Numbers:", "A long prompt about the weather today and tomorrow, " * 4, "x", "hello there"]
    ids = [reference.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    stop = reference.generate_ids([ids[3]], GenerateOptions(max_new_tokens=10))[0].text[4:7].strip() or "e"
    options = [
        GenerateOptions(max_new_tokens=30),
        GenerateOptions(max_new_tokens=5),
        GenerateOptions(max_new_tokens=20, do_sample=True, temperature=0.7, top_p=0.9),
        GenerateOptions(max_new_tokens=10, stop_strings=(stop,)),
    ]
    engine = Engine(reference, max_batch_size=8, batch_wait_ms=0)
    engine.start()
    futures = []
    for i, (x, opts) in enumerate(zip(ids, options)):
        futures.append(engine.submit(Job([x, x], [7 + i, 8 + i], opts)))
        time.sleep(0.02 * i)  # later jobs join a batch that is already running
    outs = [f.result(60) for f in futures]
    engine.stop()
    for x, opts, got, i in zip(ids, options, outs, range(4)):
        assert got == reference.generate_ids([x, x], opts, seeds=[7 + i, 8 + i])
    assert engine.stats.max_requests_per_call > 1


def test_a_short_answer_returns_while_a_long_one_is_decoded(reference):
    ids = reference.tokenizer("go on", add_special_tokens=False)["input_ids"]
    engine = Engine(reference, max_batch_size=8, batch_wait_ms=0)
    engine.start()
    long = engine.submit(Job([ids], [0], GenerateOptions(max_new_tokens=400)))
    short = engine.submit(Job([ids], [0], GenerateOptions(max_new_tokens=2)))
    assert len(short.result(60)[0].token_ids) == 2
    assert not long.done()
    assert len(long.result(120)[0].token_ids) == 400
    engine.stop()


def test_priority_rows_decode_short_rows_first_and_change_no_output(reference):
    """With priority_rows a short job's steps leave the long rows waiting; every output equals alone."""
    ids = reference.tokenizer("go on", add_special_tokens=False)["input_ids"]
    long_opts, short_opts = GenerateOptions(max_new_tokens=120), GenerateOptions(max_new_tokens=4)
    engine = Engine(reference, max_batch_size=8, batch_wait_ms=0, priority_rows=2)
    engine.start()
    long = engine.submit(Job([ids] * 4, [1, 2, 3, 4], long_opts))
    while engine.stats.steps < 3:
        time.sleep(0.005)
    short = engine.submit(Job([ids], [5], short_opts))
    got_short = short.result(60)
    assert engine.stats.priority_steps >= 3 and not long.done()
    got_long = long.result(120)
    engine.stop()
    assert got_short == reference.generate_ids([ids], short_opts, seeds=[5])
    assert got_long == reference.generate_ids([ids] * 4, long_opts, seeds=[1, 2, 3, 4])
    assert engine.stats.max_rows_per_step == 4


@pytest.mark.parametrize("priority_rows", [0, 1])
def test_with_priority_rows_a_long_request_waits_while_a_short_one_runs(reference, priority_rows):
    """A long request sent just after a short one joins at once without priority_rows, after it with."""
    ids = reference.tokenizer("go on", add_special_tokens=False)["input_ids"]
    engine = Engine(reference, max_batch_size=8, batch_wait_ms=0, priority_rows=priority_rows)
    engine.start()
    first = engine.submit(Job([ids] * 3, [1, 2, 3], GenerateOptions(max_new_tokens=200)))
    while engine.stats.steps < 3:
        time.sleep(0.005)
    marks: dict[str, int] = {}
    short = Job([ids], [4], GenerateOptions(max_new_tokens=30))
    short.future.add_done_callback(lambda _: marks.setdefault("short_done", engine.stats.steps))
    late = Job(
        [ids], [5], GenerateOptions(max_new_tokens=60), on_delta=lambda *_: marks.setdefault("late", engine.stats.steps)
    )
    engine.submit(short)
    engine.submit(late)
    assert late.future.result(120)[0].completion_tokens == 60
    first.result(120)
    engine.stop()
    assert "late" in marks and "short_done" in marks
    assert (marks["late"] > marks["short_done"]) == bool(priority_rows), marks


@pytest.mark.parametrize("priority_rows", [0, 1])
def test_with_priority_rows_a_burst_prefills_and_decodes_its_short_request_first(reference, priority_rows):
    """A long and a short request sent together to an idle engine: with priority_rows the long one joins after."""
    ids = reference.tokenizer("go on", add_special_tokens=False)["input_ids"]
    engine = Engine(reference, max_batch_size=8, batch_wait_ms=200, priority_rows=priority_rows)
    engine.start()
    marks: dict[str, int] = {}
    long = Job(
        [ids], [1], GenerateOptions(max_new_tokens=60), on_delta=lambda *_: marks.setdefault("long", engine.stats.steps)
    )
    short = Job([ids], [2], GenerateOptions(max_new_tokens=20))
    short.future.add_done_callback(lambda _: marks.setdefault("short_done", engine.stats.steps))
    engine.submit(long)
    engine.submit(short)
    assert long.future.result(120)[0].completion_tokens == 60
    engine.stop()
    assert (marks["long"] > marks["short_done"]) == bool(priority_rows), marks


def test_with_priority_rows_a_flood_of_short_requests_slows_a_long_one_but_never_stops_it(reference):
    """A row that has waited 4 * short_tokens steps is decoded with the short ones."""
    ids = reference.tokenizer("go on", add_special_tokens=False)["input_ids"]
    engine = Engine(reference, max_batch_size=8, batch_wait_ms=0, priority_rows=1, short_tokens=2)
    engine.start()
    deltas: list[int] = []
    long = engine.submit(Job([ids], [1], GenerateOptions(max_new_tokens=40), on_delta=lambda *_: deltas.append(1)))
    while engine.stats.steps < 1:
        time.sleep(0.005)
    before = len(deltas)
    flood = [engine.submit(Job([ids], [100 + i], GenerateOptions(max_new_tokens=2))) for i in range(150)]
    for f in flood:  # 150 short requests, 7 at a time: a short one always runs
        f.result(60)
    progressed = len(deltas) - before
    assert long.result(120)[0].completion_tokens == 40
    engine.stop()
    assert engine.stats.priority_steps > 20 and progressed > 0, (progressed, engine.stats)


def test_priority_rows_is_checked_with_the_scheduler(tmp_path):
    from instillm.errors import ConfigError

    with pytest.raises(ConfigError, match="priority_rows.*>= 0"):
        create_app(tmp_path / "missing", priority_rows=-1)
    with pytest.raises(ConfigError, match="priority_rows: needs scheduler 'continuous'"):
        create_app(tmp_path / "missing", scheduler="static", priority_rows=4)


@pytest.mark.parametrize("engine_class", [Engine, BatchEngine])
def test_a_job_left_queued_at_stop_fails_instead_of_hanging(reference, engine_class):
    ids = reference.tokenizer("a b", add_special_tokens=False)["input_ids"]
    engine = engine_class(reference, batch_wait_ms=0)
    engine.start()
    engine.stop()
    engine._thread = threading.Thread(target=lambda: None)  # "running", but its worker has gone
    engine._thread.start()
    late = engine.submit(Job([ids], [0], GenerateOptions(max_new_tokens=2)))
    engine.stop(timeout=1)
    with pytest.raises(RuntimeError, match="stopped"):
        late.result(5)
