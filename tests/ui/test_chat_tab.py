"""The Chat tab's functions: settings, a local model streamed, an endpoint, both sides at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from instillm.errors import ConfigError, DataError
from instillm.ui import chat_tab
from instillm.ui.chat_tab import ChatSettings, Target

PROMPT = [{"role": "user", "content": "Reverse the word abc"}]


@pytest.fixture(scope="module")
def pool() -> chat_tab.ModelPool:
    return chat_tab.ModelPool("cpu")


def test_settings_are_greedy_by_default_and_shown():
    s = ChatSettings()
    assert s.describe() == "greedy (temperature 0) · max_new_tokens 128 · each model's saved template"
    assert s.generate_options().do_sample is False and s.sampling_params() == {"max_tokens": 128, "temperature": 0.0}
    hot = ChatSettings(max_new_tokens=8, temperature=0.7, top_p=0.9, seed=3, template="chatml")
    assert hot.describe() == "sampled: temperature 0.7, top_p 0.9, seed 3 · max_new_tokens 8 · template chatml"
    opts = hot.generate_options()
    assert (opts.do_sample, opts.temperature, opts.top_p, opts.seed, opts.max_new_tokens) == (True, 0.7, 0.9, 3, 8)
    assert hot.sampling_params() == {"max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3}


def test_targets_and_messages_are_checked():
    assert chat_tab.messages_for("hi", "be brief") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    with pytest.raises(ConfigError, match="prompt"):
        chat_tab.messages_for("  ")
    with pytest.raises(ConfigError, match="base URL"):
        Target("endpoint", "tiny").check()
    with pytest.raises(ConfigError, match="model path"):
        Target("local", "").check()
    assert "secret" not in repr(Target("endpoint", "m", "http://x/v1", api_key="secret"))


def test_a_local_model_streams_the_greedy_answer_it_gives_in_one_call(pool, tiny_model_dir):
    from instillm.llm.generation import generate_chat

    settings = ChatSettings(max_new_tokens=12)
    texts = list(chat_tab.answer_stream(Target("local", str(tiny_model_dir)), pool, PROMPT, settings))
    lm, _ = pool.get(str(tiny_model_dir))
    [whole] = generate_chat(lm.model, lm.tokenizer, [PROMPT], settings.generate_options(), renderer=lm.renderer)
    assert len(texts) > 2 and texts[-1] == whole.text
    assert all(b.startswith(a) for a, b in zip(texts[:-2], texts[1:-1]))  # each piece extends the last
    again = list(chat_tab.answer_stream(Target("local", str(tiny_model_dir)), pool, PROMPT, settings))
    assert again[-1] == texts[-1]  # greedy: repeatable
    assert pool.get(str(tiny_model_dir))[0] is lm  # loaded once
    shown = chat_tab.preview(Target("local", str(tiny_model_dir)), pool, PROMPT, settings)
    assert shown == lm.renderer.prompt_text(PROMPT) and shown.endswith("<|im_start|>assistant\n")


def test_an_endpoint_streams_through_the_llm_backend(pool, tiny_server, tiny_model_dir):
    from instillm.llm import BackendConfig, chat, make_backend

    target = Target("endpoint", tiny_server.model, tiny_server.base_url)
    settings = ChatSettings(max_new_tokens=12)
    texts = list(chat_tab.answer_stream(target, pool, PROMPT, settings))
    assert len(texts) > 1 and all(b.startswith(a) and b != a for a, b in zip(texts, texts[1:]))  # pieces, growing
    backend = make_backend(BackendConfig(kind="openai", model=tiny_server.model, base_url=tiny_server.base_url))
    assert texts[-1] == backend.generate([chat(PROMPT, **settings.sampling_params())])[0].text  # the whole answer
    backend.close()
    local = list(chat_tab.answer_stream(Target("local", str(tiny_model_dir)), pool, PROMPT, settings))[-1]
    assert texts[-1].strip() == local.strip()  # same model, same saved template, greedy
    assert "own saved template" in chat_tab.preview(target, pool, PROMPT, settings)


def test_side_by_side_the_endpoint_side_moves_more_than_once(pool, tiny_server, tiny_model_dir):
    settings = ChatSettings(max_new_tokens=12)
    targets = [Target("local", str(tiny_model_dir)), Target("endpoint", tiny_server.model, tiny_server.base_url)]
    streams = [lambda t=t: chat_tab.answer_stream(t, pool, PROMPT, settings) for t in targets]
    updates = list(chat_tab.side_by_side(streams))
    endpoint_side = [u[1] for u in updates]
    assert len(set(endpoint_side) - {""}) > 1  # partial answers, not one at the end
    assert updates[-1][0].strip() == updates[-1][1].strip()


def slow(texts: list[str], gate: threading.Event | None = None) -> Iterator[str]:
    for t in texts:
        if gate is not None:
            gate.wait(5)
        yield t


def failing() -> Iterator[str]:
    yield "partial"
    raise DataError("the model went away")


def test_both_sides_stream_at_once_and_one_failing_leaves_the_other():
    gate = threading.Event()
    updates = chat_tab.side_by_side([lambda: slow(["a", "ab"], gate), lambda: slow(["x"])])
    first = next(updates)
    assert first == ["", "x"]  # B moved while A waited
    gate.set()
    assert list(updates)[-1] == ["ab", "x"]
    last = list(chat_tab.side_by_side([failing, lambda: slow(["fine"])]))[-1]
    assert last == ["error: the model went away", "fine"]
    assert list(chat_tab.side_by_side([lambda: iter(()), lambda: iter(())])) == []
