"""The LLM interface itself: validation messages, cache keys, make_backend."""

from __future__ import annotations

import dataclasses
import math

import pytest

from instillm.errors import ConfigError
from instillm.llm.backend import (
    Backend,
    BackendConfig,
    LLMRequest,
    SamplingParams,
    chat,
    completion,
    make_backend,
)

USER = [{"role": "user", "content": "Name a colour."}]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": True}, "n"),
        ({"stop": [""]}, "stop"),
        ({"stop": [3]}, "stop"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_sampling_params_name_the_bad_setting(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^(.*; )?{field}:"):
        SamplingParams(**kwargs)


def test_sampling_params_report_every_problem_at_once():
    with pytest.raises(ConfigError) as e:
        SamplingParams(max_tokens=0, n=0, top_p=2)
    assert all(f"{name}:" in str(e.value) for name in ("max_tokens", "n", "top_p"))


def test_sampling_params_normalise_stop_and_numbers():
    p = SamplingParams(stop="\n", temperature=1, top_p=1)
    assert p.stop == ("\n",) and SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert isinstance(p.temperature, float) and isinstance(p.top_p, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.n = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({}, "exactly one of messages"),
        ({"messages": tuple(USER), "prompt": "x"}, "exactly one of messages"),
        ({"messages": ()}, "need at least one"),
        ({"messages": ({"role": "robot", "content": "x"},)}, "robot"),
        ({"messages": ({"role": "user"},)}, r"messages\[0\]"),
        ({"messages": ({"role": "user", "content": None},)}, r"messages\[0\]"),
        ({"messages": ("hello",)}, r"messages\[0\]"),
        ({"prompt": 42}, "prompt: must be a string"),
    ],
)
def test_llm_request_validation(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        LLMRequest(**kwargs)


def test_request_kind_and_message_normalisation():
    r = chat([{"role": "user", "content": "hi", "name": "extra"}])
    assert r.kind == "chat" and r.messages == ({"role": "user", "content": "hi"},)
    assert completion("Once upon").kind == "completion"


def test_key_is_stable_and_ignores_n_but_not_the_sample_index():
    a = chat(USER, temperature=0.7, n=1)
    b = chat([dict(reversed(list(USER[0].items())))], temperature=0.7, n=5)
    assert a.key("m", 0) == b.key("m", 0)  # same request, n and dict order aside
    assert a.key("m", 0) != a.key("m", 1)
    assert chat(USER, temperature=0).key("m", 0) == chat(USER, temperature=0.0).key("m", 0)
    # A fixed value: a change of the key format silently invalidates every cache on disk.
    assert completion("x").key("m", 0) == "2345c0a00ea8573ed5f36abcab7daa42484e4fd30f35034af007c1463eccb497"


@pytest.mark.parametrize(
    "other",
    [
        chat(USER, temperature=0.5),
        chat(USER, max_tokens=9),
        chat(USER, top_p=0.9),
        chat(USER, stop=["\n"]),
        chat(USER, seed=1),
        chat([{"role": "user", "content": "Name a color."}]),
        chat([{"role": "system", "content": ""}] + USER),
        completion("Name a colour."),
    ],
)
def test_key_changes_with_everything_else(other):
    assert other.key("m", 0) != chat(USER).key("m", 0)


def test_key_changes_with_the_model():
    assert chat(USER).key("a", 0) != chat(USER).key("b", 0)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"kind": "anthropic", "model": "m"}, "backend.kind"),
        ({"kind": "transformers", "model": ""}, "backend.model"),
        ({"kind": "openai", "model": "m"}, "backend.base_url"),
        ({"kind": "transformers", "model": "m", "concurrency": 0}, "backend.concurrency"),
        ({"kind": "transformers", "model": "m", "batch_size": True}, "backend.batch_size"),
        ({"kind": "transformers", "model": "m", "max_retries": -1}, "backend.max_retries"),
        ({"kind": "transformers", "model": "m", "timeout": 0}, "backend.timeout"),
        ({"kind": "transformers", "model": "m", "backoff": -1.0}, "backend.backoff"),
        ({"kind": "transformers", "model": "m", "max_backoff": math.inf}, "backend.max_backoff"),
    ],
)
def test_backend_config_names_the_bad_setting(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        BackendConfig(**kwargs)


def test_backend_config_is_frozen_and_rejects_unknown_keys():
    cfg = BackendConfig(kind="openai", model="m", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = "x"  # type: ignore[misc]
    with pytest.raises(TypeError, match="temprature"):
        BackendConfig(kind="openai", model="m", base_url="http://127.0.0.1:1/v1", temprature=1)  # type: ignore[call-arg]


def test_make_backend_builds_the_openai_backend_and_wraps_the_cache(tmp_path):
    from instillm.llm.cache import CachedBackend
    from instillm.llm.openai_backend import OpenAIBackend

    plain = make_backend(BackendConfig(kind="openai", model="m", base_url="http://127.0.0.1:1/v1"))
    assert isinstance(plain, OpenAIBackend) and isinstance(plain, Backend)
    wrapped = make_backend(
        BackendConfig(kind="openai", model="m", base_url="http://127.0.0.1:1/v1", cache=str(tmp_path / "c.sqlite"))
    )
    assert isinstance(wrapped, CachedBackend) and isinstance(wrapped.inner, OpenAIBackend)
    assert wrapped.model == "m" and isinstance(wrapped, Backend)
    wrapped.close()


def test_reply_text_is_the_one_way_a_reply_becomes_scored_text():
    import dataclasses

    from instillm.llm import LLMSample, reply_text
    from instillm.llm.generation import GenerationOutput

    assert reply_text("  Paris.\n") == "Paris."
    sample = LLMSample(text="\n yes \n", finish_reason="stop")
    assert reply_text(sample) == "yes"
    fields = {f.name: None for f in dataclasses.fields(GenerationOutput)}
    assert reply_text(GenerationOutput(**{**fields, "text": " 42 "})) == "42"


def test_backend_config_device_and_no_key_in_repr():
    from instillm.errors import ConfigError
    from instillm.llm import BackendConfig

    cfg = BackendConfig(kind="transformers", model="m", device="cpu", api_key="sk-secret-9")
    assert cfg.device == "cpu" and "sk-secret-9" not in repr(cfg) and "sk-secret-9" not in str(cfg)
    with pytest.raises(ConfigError) as e:
        BackendConfig(kind="transformers", model="m", device="gpu")
    assert any(p.startswith("backend.device:") for p in e.value.problems)
    with pytest.raises(ConfigError, match="does not apply to kind 'vllm'"):
        BackendConfig(kind="vllm", model="m", device="cpu")


def test_local_backend_loads_on_the_configured_device(tiny_model_dir):
    from instillm.llm import BackendConfig, make_backend

    backend = make_backend(BackendConfig(kind="transformers", model=str(tiny_model_dir), device="cpu"))
    try:
        assert next(backend.generator.model.parameters()).device.type == "cpu"
    finally:
        backend.close()


def test_cache_key_of_a_prompt_with_a_lone_surrogate():
    from instillm.llm import completion

    key = completion("a \ud800 b").key("m", 0)
    assert len(key) == 64 and key != completion("a b").key("m", 0)
    assert completion("plain").key("m", 0) == completion("plain").key("m", 0)
