"""The Chat tab's logic: two targets (local models, or a model and an OpenAI-compatible endpoint) answer the
same prompt side by side, streamed, with visible generation settings, greedy by default.

A local model is loaded with `load_local` (a LoRA adapter on its base) and renders the prompt with its
saved chat template (the one it trained with) unless a template is forced; its tokens stream as they
are decoded. An endpoint is called through the `instillm.llm` openai backend (`OpenAIBackend.stream`: the
same retries and timeout until its first text) and applies its own saved template; its answer streams as the
endpoint sends it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from instillm.config import Config, check_min, check_min_int, check_range
from instillm.errors import ConfigError, InstillmError

KINDS = ("local", "endpoint")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ChatSettings(Config):
    """Generation settings shared by both sides; temperature 0 is greedy (repeatable comparisons)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    template: str = "auto"

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min_int(problems, "max_new_tokens", v["max_new_tokens"])
        check_min(problems, "temperature", v["temperature"], 0)
        check_range(problems, "top_p", v["top_p"], 0, 1, "(]")
        return problems

    def describe(self) -> str:
        """The settings in one line, as the tab shows them."""
        mode = "greedy (temperature 0)" if self.temperature <= 0 else f"sampled: temperature {self.temperature:g}"
        mode += "" if self.temperature <= 0 else f", top_p {self.top_p:g}, seed {self.seed}"
        template = "each model's saved template" if self.template == "auto" else f"template {self.template}"
        return f"{mode} · max_new_tokens {self.max_new_tokens} · {template}"

    def generate_options(self) -> Any:
        """GenerateOptions for a local model."""
        from instillm.llm.generation import GenerateOptions

        return GenerateOptions.sampling(
            self.temperature, self.top_p, max_new_tokens=int(self.max_new_tokens), seed=int(self.seed)
        )

    def sampling_params(self) -> dict[str, Any]:
        """SamplingParams fields for an endpoint request."""
        return {"max_tokens": int(self.max_new_tokens), "temperature": float(self.temperature)} | (
            {"top_p": float(self.top_p), "seed": int(self.seed)} if self.temperature > 0 else {}
        )


@dataclass(frozen=True)
class Target:
    """What answers on one side: a local model (path or hub id) or an endpoint (base_url + served model name)."""

    kind: str
    model: str
    base_url: str = ""
    api_key: str = field(default="", repr=False)

    def check(self) -> None:
        """ConfigError naming what is missing."""
        if self.kind not in KINDS:
            raise ConfigError(f"kind {self.kind!r}: expected one of {KINDS}")
        if not self.model.strip():
            raise ConfigError("give a model path (local) or the served model name (endpoint)")
        if self.kind == "endpoint" and not self.base_url.strip():
            raise ConfigError("an endpoint needs its base URL, e.g. http://127.0.0.1:8000/v1")

    @property
    def label(self) -> str:
        """How the tab names the target."""
        return self.model if self.kind == "local" else f"{self.model} @ {self.base_url}"


def messages_for(prompt: str, system: str = "") -> Messages:
    """The conversation both sides answer: an optional system turn and the user's prompt."""
    if not prompt.strip():
        raise ConfigError("write a prompt first")
    return ([{"role": "system", "content": system}] if system.strip() else []) + [{"role": "user", "content": prompt}]


# ------------------------------------------------------------------------------ local models


class ModelPool:
    """Local models loaded once per (path, template), each with a lock: one generation at a time per model."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._models: dict[tuple[str, str], Any] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, path: str, template: str = "auto") -> tuple[Any, threading.Lock]:
        """(LocalModel, its lock), loading the model on first use."""
        from instillm.models.loading import load_local

        key = (path, template)
        with self._guard:
            if key not in self._models:
                self._models[key] = load_local(path, template, self.device)
                self._locks[key] = threading.Lock()
            return self._models[key], self._locks[key]


def prompt_preview(lm: Any, messages: Messages) -> str:
    """The prompt text a local model is given (its template's rendering, generation prompt included)."""
    return str(lm.renderer.prompt_text(messages))


def stream_local(lm: Any, lock: threading.Lock, messages: Messages, settings: ChatSettings) -> Iterator[str]:
    """The answer of a local model so far, after every decoded token; the final text last."""
    from instillm.llm.generation import Generator

    with lock:
        ids = lm.tokenizer(prompt_preview(lm, messages), add_special_tokens=False, verbose=False)["input_ids"]
        tokens: queue.Queue[tuple[str, Any]] = queue.Queue()
        gen = Generator(lm.model, lm.tokenizer, lm.renderer)
        run = lambda: gen.generate_ids(
            [ids], settings.generate_options(), on_token=lambda i, t, f: tokens.put(("t", t))
        )
        threading.Thread(target=_deliver, args=(run, tokens), daemon=True).start()
        yield from _decoded(tokens, lm.tokenizer)


def _deliver(run: Callable[[], Any], out: queue.Queue) -> None:
    """Run `run` and put ("done", its result) or ("error", the exception) on `out`."""
    try:
        out.put(("done", run()))
    except BaseException as e:  # handed to the consumer, which raises it
        out.put(("error", e))


def _decoded(tokens: queue.Queue, tokenizer: Any) -> Iterator[str]:
    """Text of the token ids arriving on `tokens` so far; the generator's own final text last."""
    ids: list[int] = []
    while True:
        kind, value = tokens.get()
        if kind == "error":
            raise value
        if kind == "done":
            yield value[0].text
            return
        if value is not None:
            ids.append(value)
            yield tokenizer.decode(ids, skip_special_tokens=True)


# ------------------------------------------------------------------------------ endpoints


def stream_endpoint(
    target: Target, messages: Messages, settings: ChatSettings, timeout: float = 120.0
) -> Iterator[str]:
    """The endpoint's answer so far, after every piece of text it streams."""
    from instillm.llm import BackendConfig, chat
    from instillm.llm.openai_backend import OpenAIBackend

    config = BackendConfig(
        kind="openai", model=target.model, base_url=target.base_url, api_key=target.api_key or None, timeout=timeout
    )
    backend = OpenAIBackend(config)
    try:
        yield from _accumulated(backend.stream(chat(messages, **settings.sampling_params())))
    finally:
        backend.close()


def _accumulated(deltas: Iterator[str]) -> Iterator[str]:
    """The text so far after each delta."""
    text = ""
    for delta in deltas:
        text += delta
        yield text


# ------------------------------------------------------------------------------ both sides


def answer_stream(target: Target, pool: ModelPool, messages: Messages, settings: ChatSettings) -> Iterator[str]:
    """The streamed answer of one target."""
    target.check()
    if target.kind == "endpoint":
        return stream_endpoint(target, messages, settings)
    lm, lock = pool.get(target.model, settings.template)
    return stream_local(lm, lock, messages, settings)


def preview(target: Target, pool: ModelPool, messages: Messages, settings: ChatSettings) -> str:
    """What the target is given: the rendered prompt of a local model; a note for an endpoint."""
    if target.kind == "endpoint":
        return f"(the endpoint renders {len(messages)} message(s) with its own saved template)"
    lm, _ = pool.get(target.model, settings.template)
    return prompt_preview(lm, messages)


def side_by_side(streams: Sequence[Callable[[], Iterator[str]]]) -> Iterator[list[str]]:
    """Run each stream in its own thread; yield every side's text so far whenever one of them moves.

    A side that fails shows `error: ...` instead of an answer; the other goes on."""
    texts = [""] * len(streams)
    updates: queue.Queue[tuple[int, str | None]] = queue.Queue()
    for i, make in enumerate(streams):
        threading.Thread(target=_pump, args=(i, make, updates), daemon=True).start()
    running = len(streams)
    while running:
        i, text = updates.get()
        if text is None:
            running -= 1
            continue
        texts[i] = text
        yield list(texts)


def _pump(index: int, make: Callable[[], Iterator[str]], out: queue.Queue) -> None:
    """Forward every text of one stream to `out` as (index, text), then (index, None)."""
    try:
        for text in make():
            out.put((index, text))
    except InstillmError as e:
        out.put((index, f"error: {e}"))
    except Exception as e:  # a UI shows any failure of one side rather than losing the other
        out.put((index, f"error: {type(e).__name__}: {e}"))
    finally:
        out.put((index, None))
