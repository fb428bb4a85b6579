"""One interface to every LLM instillm calls: teachers (Self-Instruct, Evol-Instruct) and judges.

A `Backend` takes a batch of `LLMRequest`s (a chat conversation or a raw completion prompt, with
sampling settings and `n` samples) and returns one `LLMResponse` per request, in order, each with
`n` `LLMSample`s (text, finish reason, token counts). Implementations:

- `instillm.llm.openai_backend.OpenAIBackend`: any OpenAI-compatible endpoint (vLLM, Ollama,
  llama.cpp, TGI, OpenAI, our own `instillm serve`) through the official openai client.
- `instillm.llm.local_backend.TransformersBackend`: a local HF model through our batched generator.
- `instillm.llm.local_backend.VLLMBackend`: vLLM in-process, where `vllm` is importable.
- `instillm.llm.cache.CachedBackend`: wraps any of them with an on-disk response cache keyed by
  the full request and sample index, so a re-run pipeline re-sends nothing already answered.

`make_backend(BackendConfig)` builds one from a config (YAML / CLI flags map onto it 1:1).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from instillm.config import Config, check_choice, check_min, check_min_int, check_range, one_or_many
from instillm.errors import ConfigError, InstillmError

BACKEND_KINDS = ("openai", "transformers", "vllm")
FINISH_REASONS = ("stop", "length")
ROLES = ("system", "user", "assistant")


# --------------------------------------------------------------------------------------------
# errors


class LLMError(InstillmError):
    """A request to an LLM backend failed; the message names the backend, model and cause."""


class LLMRequestError(LLMError):
    """The endpoint rejected the request (a 4xx other than 429): retrying cannot help."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class LLMResponseError(LLMError):
    """The endpoint answered with something that is not a valid completion (malformed JSON, no choices...)."""


class LLMUnavailableError(LLMError):
    """The endpoint kept failing (5xx, 429, timeouts, connection errors) after every retry."""


# --------------------------------------------------------------------------------------------
# requests and responses


@dataclass(frozen=True)
class SamplingParams(Config):
    """Sampling settings of one request; `temperature` 0 is greedy. `max_tokens` counts new tokens.
    Numbers are stored as floats, so cache keys do not depend on how they were written (0 or 0.0)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = one_or_many()
    seed: int | None = None

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min_int(problems, "max_tokens", v["max_tokens"])
        check_min(problems, "temperature", v["temperature"], 0)
        check_range(problems, "top_p", v["top_p"], 0, 1, "(]")
        check_min_int(problems, "n", v["n"])
        if not all(v["stop"]):
            problems.append(f"stop: must be non-empty strings, got {v['stop']!r}")
        return problems


@dataclass(frozen=True)
class LLMRequest:
    """A chat request (`messages`: role/content dicts) or a completion request (`prompt`), not both."""

    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ConfigError("an LLMRequest takes exactly one of messages (chat) or prompt (completion)")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ConfigError(f"prompt: must be a string, got {type(self.prompt).__name__}")
        if self.messages is not None:
            for i, m in enumerate(self.messages):
                if (
                    not isinstance(m, Mapping)
                    or not isinstance(m.get("role"), str)
                    or not isinstance(m.get("content"), str)
                ):
                    raise ConfigError(f"messages[{i}]: must be a dict with string 'role' and 'content', got {m!r}")
            msgs = tuple({"role": m["role"], "content": m["content"]} for m in self.messages)
            bad = [m["role"] for m in msgs if m["role"] not in ROLES]
            if not msgs or bad:
                raise ConfigError(f"messages: need at least one, roles in {ROLES}; got roles {bad or 'none'}")
            object.__setattr__(self, "messages", msgs)

    @property
    def kind(self) -> str:
        """ "chat" or "completion"."""
        return "chat" if self.messages is not None else "completion"

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages of a chat request, as a new list (ValueError for a completion request)."""
        if self.messages is None:
            raise ValueError("a completion request has no messages")
        return list(self.messages)

    def key(self, model: str, sample_index: int) -> str:
        """Cache key: sha256 of the model, the request body and the sample index (not `n`)."""
        params = asdict(self.params)
        params.pop("n")
        body = {
            "model": model,
            "kind": self.kind,
            "messages": self.messages,
            "prompt": self.prompt,
            "params": params,
            "sample": sample_index,
        }
        text = json.dumps(body, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()  # same bytes as utf-8 otherwise


def reply_text(reply: Any) -> str:
    """The text that is scored, parsed or kept from a model's reply (a string, an `LLMSample` or a
    `GenerationOutput`): its text without surrounding white space. Every evaluator and pipeline
    turns replies into text through this one function."""
    text = reply if isinstance(reply, str) else reply.text
    return text.strip()


def chat(messages: Sequence[dict[str, str]], **params: Any) -> LLMRequest:
    """A chat request; `params` are `SamplingParams` fields."""
    return LLMRequest(messages=tuple(messages), params=SamplingParams(**params))


def completion(prompt: str, **params: Any) -> LLMRequest:
    """A completion request; `params` are `SamplingParams` fields."""
    return LLMRequest(prompt=prompt, params=SamplingParams(**params))


@dataclass(frozen=True)
class LLMSample:
    """One sampled answer. `finish_reason` is "stop" (EOS/stop string) or "length" (max_tokens hit)."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


@dataclass(frozen=True)
class LLMResponse:
    """The `n` samples of one request, in sample-index order."""

    samples: tuple[LLMSample, ...]
    model: str

    @property
    def text(self) -> str:
        """The first sample's text."""
        return self.samples[0].text


Progress = Callable[[int], None]  # called with the number of requests just finished
# called with (index in the batch, response) as soon as that request is answered, before
# generate() returns (or raises): what the response cache writes to disk as it goes
OnResponse = Callable[[int, LLMResponse], None]


@runtime_checkable
class Backend(Protocol):
    """What every LLM backend offers. `model` names the model in cache keys and outputs."""

    model: str

    def generate(self, requests: Sequence[LLMRequest], progress: Progress | None = None) -> list[LLMResponse]:
        """Answer every request (batched / concurrently as the backend can), results in input order.

        Returns every response or raises. instillm's backends also take a keyword
        `on_response: OnResponse`, told of each response as it arrives (the cache uses it).
        """
        ...

    def close(self) -> None:
        """Release connections, threads or model memory."""
        ...


# --------------------------------------------------------------------------------------------
# config


@dataclass(frozen=True)
class BackendConfig(Config):
    """Which LLM to call and how. `model`: served model name (openai) or path / hub id (local).

    `cache`: path of the on-disk response cache (None: no cache). `concurrency`: requests in
    flight at once (openai); `batch_size`: rows generated together (local). `timeout` in seconds
    per HTTP request; `max_retries` on 429/5xx/timeouts/connection errors, with exponential
    backoff from `backoff` seconds (full jitter, capped at `max_backoff`), honouring Retry-After.
    `device`: where a local (transformers) backend runs its model ("auto": CUDA when available).
    `api_key` never shows in `repr` (logs, tracebacks). Problems are named `backend.<field>` when
    it is built on its own.
    """

    path_prefix = "backend"
    kind: str = "openai"
    model: str = ""
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    cache: str | None = None
    concurrency: int = 8
    batch_size: int = 32
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    device: str = "auto"

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_choice(problems, "kind", v["kind"], BACKEND_KINDS)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v["device"]):
            problems.append(f"device: {v['device']!r} is not auto, cpu, cuda, cuda:N or mps")
        elif v["kind"] == "vllm" and v["device"] not in ("auto", "cuda"):
            problems.append(f"device: {v['device']!r} does not apply to kind 'vllm', which places its model itself")
        if not v["model"]:
            problems.append("model: required (a served model name, a local path or a hub id)")
        if v["kind"] == "openai" and not v["base_url"]:
            problems.append("base_url: required for kind 'openai' (e.g. http://127.0.0.1:8000/v1)")
        for name, low in (("concurrency", 1), ("batch_size", 1), ("max_retries", 0)):
            check_min_int(problems, name, v[name], minimum=low)
        for name in ("timeout", "backoff", "max_backoff"):
            check_min(problems, name, v[name], 0, strict=True, note=" (seconds)")
        return problems


def make_backend(config: BackendConfig) -> Backend:
    """The backend `config` asks for, wrapped in the response cache when `config.cache` is set."""
    if config.kind == "openai":
        from instillm.llm.openai_backend import OpenAIBackend

        backend: Backend = OpenAIBackend(config)
    elif config.kind == "transformers":
        from instillm.llm.local_backend import TransformersBackend

        backend = TransformersBackend(config)
    else:
        from instillm.llm.local_backend import VLLMBackend

        backend = VLLMBackend(config)
    if config.cache:
        from instillm.llm.cache import CachedBackend

        backend = CachedBackend(backend, Path(config.cache))
    return backend
