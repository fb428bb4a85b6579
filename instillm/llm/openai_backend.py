"""Any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, TGI, OpenAI, `instillm serve`) as a Backend.

Requests go through the official openai client with its own retries turned off (`max_retries=0`):
the retry loop here is the only one, so attempts are counted and bounded in one place.

What is retried, and how:

- 429, 408 and 5xx answers, timeouts, connection errors (including a body cut off before its
  Content-Length) and malformed bodies (invalid JSON, not a completion object): up to
  `config.max_retries` more attempts. The wait before retry k (0-based) is drawn uniformly from
  [0, min(max_backoff, backoff * 2**k)] seconds ("full jitter"), unless the answer carried a
  `Retry-After` (seconds or an HTTP date) or `retry-after-ms` header: then exactly that long
  (not capped by `max_backoff`, since waiting less only burns a retry; capped at 10 minutes).
  Retries exhausted: `LLMUnavailableError` naming the endpoint, the model and the last cause.
- A well-formed 200 that is not a usable answer (no choices, a choice without text, fewer or
  more choices than `n`): retried at most `SHAPE_RETRIES` times (it is usually deterministic,
  e.g. an endpoint that ignores `n`), then `LLMResponseError`.
- Any other 4xx (bad request, auth, unknown model): `LLMRequestError(status)` at once.

Streaming (`stream(request)`, one sample: n = 1): the same call with `stream=True`, yielding the
answer's text deltas as the endpoint sends them (stop strings and max_tokens are sent as for
`generate`, so the endpoint applies them the same way; the text streamed equals the text it would
answer whole). Until the first text arrives (or the stream ends empty) the policy above holds:
the same retries, waits, timeout and errors (an error event in the stream counts as a 5xx; a
stream without any choice is an unusable answer). Once text has been yielded nothing can be
retried: a later failure (a timeout between chunks, a dropped connection, an error event) raises
`LLMUnavailableError` naming the cause. Closing the iterator closes the connection.

At most `config.concurrency` requests are in flight (a thread pool). `generate` returns every
response in input order or raises; `on_response(index, response)` is called in the caller's
thread as each request is answered, so a caller (the response cache) keeps what was answered
even when a later request fails. On the first failure requests not yet started are cancelled
and those in flight are let finish (and still reported) before the error is raised.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import openai

from instillm.errors import ConfigError
from instillm.llm.backend import (
    BackendConfig,
    LLMRequest,
    LLMRequestError,
    LLMResponse,
    LLMResponseError,
    LLMSample,
    LLMUnavailableError,
    OnResponse,
    Progress,
)

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

T = TypeVar("T")
SHAPE_RETRIES = 1  # extra attempts for a 200 without usable choices
MAX_RETRY_AFTER = 600.0  # seconds; a longer Retry-After is treated as this
RETRY_STATUSES = (408, 429)  # plus every 5xx


class _Transient(Exception):
    """One attempt failed in a way a retry can fix; `wait` is the server's Retry-After, if any."""

    def __init__(self, cause: str, wait: float | None = None) -> None:
        super().__init__(cause)
        self.wait = wait


class _BadShape(Exception):
    """A parsed 200 that holds no usable answer."""


class OpenAIBackend:
    """An OpenAI-compatible chat/completions endpoint; see the module docstring for retries."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.model = config.model
        self.client = openai.OpenAI(
            base_url=config.base_url, api_key=config.api_key or "none", max_retries=0, timeout=config.timeout
        )
        self._random = random.Random()

    @property
    def name(self) -> str:
        """How errors name this backend: endpoint and model."""
        return f"openai backend {self.config.base_url} (model {self.model!r})"

    def generate(
        self, requests: Sequence[LLMRequest], progress: Progress | None = None, on_response: OnResponse | None = None
    ) -> list[LLMResponse]:
        """Answer every request, `config.concurrency` at a time; results in input order."""
        requests = list(requests)
        results: list[LLMResponse | None] = [None] * len(requests)
        if not requests:
            return []
        pool = ThreadPoolExecutor(min(self.config.concurrency, len(requests)), thread_name_prefix="instillm-openai")
        futures: dict[Future, int] = {pool.submit(self.answer, r): i for i, r in enumerate(requests)}
        error: BaseException | None = None
        try:
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                if fut.exception() is not None:
                    if error is None:
                        error = fut.exception()
                        for f in futures:
                            f.cancel()
                    continue
                index = futures[fut]
                results[index] = response = fut.result()
                if on_response is not None:
                    on_response(index, response)
                if progress is not None:
                    progress(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if error is not None:
            raise error
        return results  # type: ignore[return-value]  # every slot is filled when nothing failed

    def answer(self, request: LLMRequest) -> LLMResponse:
        """One request with the retry policy of the module docstring."""
        return self._retrying(lambda: self._attempt(request))

    def stream(self, request: LLMRequest) -> Iterator[str]:
        """The answer's text deltas as the endpoint streams them (one sample; see the module docstring)."""
        if request.params.n != 1:
            raise ConfigError(f"{self.name}: a streamed request asks for one sample, got n={request.params.n}")
        first, rest, close = self._retrying(lambda: self._open_stream(request))
        try:
            if first:
                yield first
            yield from self._rest_of_stream(rest)
        finally:
            close()

    def _open_stream(self, request: LLMRequest) -> tuple[str, Iterator[str], Callable[[], None]]:
        """One streamed call read up to its first text: (that text, "" if it ended empty; the rest; close)."""
        with self._classified():
            chunks = self._call(request, stream=True)
            deltas = _deltas(chunks, request.kind)
            try:
                first = next(deltas, "")
            except BaseException:
                chunks.close()
                raise
        return first, deltas, chunks.close

    def _rest_of_stream(self, deltas: Iterator[str]) -> Iterator[str]:
        """The deltas after the first; a failure now is LLMUnavailableError (text is out: no retry)."""
        try:
            yield from deltas
        except (_Transient, openai.APIError, ValueError, TypeError, AttributeError) as e:
            cause = str(e) if isinstance(e, _Transient) else _failure(e, self.config.timeout)
            raise LLMUnavailableError(f"{self.name}: the stream broke after its first text: {cause}") from None

    def _retrying(self, attempt_once: Callable[[], T]) -> T:
        """`attempt_once()` under the retry policy of the module docstring."""
        attempts = self.config.max_retries + 1
        shape_failures = 0
        cause = ""
        for attempt in range(attempts):
            try:
                return attempt_once()
            except _BadShape as e:
                shape_failures += 1
                if shape_failures > SHAPE_RETRIES or attempt + 1 == attempts:
                    raise LLMResponseError(
                        f"{self.name}: unusable answer after {attempt + 1} attempt(s): {e}"
                    ) from None
                cause, wait = str(e), None
            except _Transient as e:
                cause, wait = str(e), e.wait
            if attempt + 1 < attempts:
                time.sleep(self._delay(attempt, wait))
        raise LLMUnavailableError(f"{self.name}: gave up after {attempts} attempt(s); last error: {cause}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry `attempt` + 1: the server's wish, else full jitter."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        cap = min(self.config.max_backoff, self.config.backoff * 2**attempt)
        return self._random.uniform(0, cap)

    def _attempt(self, request: LLMRequest) -> LLMResponse:
        """One HTTP call; failures become _Transient, _BadShape or LLMRequestError."""
        with self._classified():
            body = self._call(request)
        return LLMResponse(samples=self._samples(request, body), model=self.model)

    @contextmanager
    def _classified(self) -> Iterator[None]:
        """The openai client's failures as _Transient (retried) or LLMRequestError (not), as the docstring says."""
        try:
            yield
        except openai.APIStatusError as e:
            status = e.status_code
            if status in RETRY_STATUSES or status >= 500:
                raise _Transient(f"HTTP {status}: {_status_message(e)}", _retry_after(e.response.headers)) from None
            raise LLMRequestError(f"{self.name}: HTTP {status}: {_status_message(e)}", status=status) from None
        except (openai.APIError, ValueError, TypeError, AttributeError) as e:  # JSONDecodeError, pydantic errors
            raise _Transient(_failure(e, self.config.timeout)) from None

    def _call(self, request: LLMRequest, stream: bool = False) -> Any:
        """The openai client call for a chat or a completion request (`stream`: an SSE stream of chunks)."""
        p = request.params
        kwargs: dict[str, Any] = {
            "model": self.model,
            "n": p.n,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
        }
        if p.stop:
            kwargs["stop"] = list(p.stop)
        if p.seed is not None:
            kwargs["seed"] = p.seed
        if stream:
            kwargs["stream"] = True
        if request.kind == "chat":
            # LLMRequest checked every message's role and content: they are valid message params.
            messages = cast("list[ChatCompletionMessageParam]", request.chat_messages())
            return self.client.chat.completions.create(messages=messages, **kwargs)
        return self.client.completions.create(prompt=request.prompt, **kwargs)

    def _samples(self, request: LLMRequest, body: Any) -> tuple[LLMSample, ...]:
        """The n samples of a parsed body; _Transient if it is no completion, _BadShape if unusable."""
        choices = getattr(body, "choices", None)
        if not isinstance(choices, list):
            raise _Transient(f"malformed response body: not a completion object ({str(body)[:80]!r})")
        n = request.params.n
        if len(choices) != n:
            raise _BadShape(
                f"{len(choices)} choice(s) for n={n}" + (" (does the endpoint support n?)" if choices else "")
            )
        choices = sorted(choices, key=lambda c: c.index if isinstance(getattr(c, "index", None), int) else 0)
        texts = [t for t in (_choice_text(c, request.kind) for c in choices) if t is not None]
        if len(texts) < len(choices):
            raise _BadShape("a choice has no text (content is null)")
        usage = getattr(body, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        counts = split_tokens(int(getattr(usage, "completion_tokens", 0) or 0), texts)
        return tuple(
            LLMSample(
                text=t,
                finish_reason="length" if c.finish_reason == "length" else "stop",
                prompt_tokens=prompt_tokens,
                completion_tokens=k,
            )
            for t, c, k in zip(texts, choices, counts)
        )

    def close(self) -> None:
        """Close the client's HTTP connections."""
        self.client.close()


def _failure(error: BaseException, timeout: float) -> str:
    """A failure of the client in words: a timeout, a connection error, an error event or a malformed body."""
    if isinstance(error, openai.APITimeoutError):
        return f"timed out after {timeout} s"
    if isinstance(error, openai.APIConnectionError):
        return f"connection error: {error.__cause__ or error}"
    if isinstance(error, openai.APIError):
        return f"error from the endpoint: {error.message}"
    return f"malformed response body: {type(error).__name__}: {error}"


def _deltas(chunks: Iterator[Any], kind: str) -> Iterator[str]:
    """The non-empty text deltas of a stream's chunks; _BadShape when it ends without a choice."""
    seen = False
    for chunk in chunks:
        choices = getattr(chunk, "choices", None)
        if not isinstance(choices, list):
            raise _Transient(f"malformed stream chunk: not a completion chunk ({str(chunk)[:80]!r})")
        for choice in choices:
            seen = True
            text = _delta_text(choice, kind)
            if text:
                yield text
    if not seen:
        raise _BadShape("the stream ended without a choice")


def _delta_text(choice: Any, kind: str) -> str | None:
    """A stream chunk's text: delta.content (chat) or text (completion); None when missing."""
    text = getattr(getattr(choice, "delta", None), "content", None) if kind == "chat" else getattr(choice, "text", None)
    return text if isinstance(text, str) else None


def _choice_text(choice: Any, kind: str) -> str | None:
    """A choice's text: message.content (chat) or text (completion); None when missing."""
    if kind == "chat":
        text = getattr(getattr(choice, "message", None), "content", None)
    else:
        text = getattr(choice, "text", None)
    return text if isinstance(text, str) else None


def split_tokens(total: int, texts: Sequence[str]) -> list[int]:
    """Split a response's completion tokens over its samples in proportion to their lengths.

    OpenAI-style usage counts the tokens of all `n` choices together; the shares (by characters,
    evenly when all are empty) sum to `total` exactly (largest remainders get the spare tokens).
    """
    weights = [len(t) for t in texts] if any(texts) else [1] * len(texts)
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [int(x) for x in exact]
    spare = total - sum(counts)
    for i in sorted(range(len(texts)), key=lambda i: counts[i] - exact[i])[:spare]:
        counts[i] += 1
    return counts


def _status_message(error: openai.APIStatusError) -> str:
    """The server's own error message when its body has one, else the client's summary."""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) and message else error.message


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked to wait (`retry-after-ms`, `Retry-After` seconds or date), or None."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


__all__ = ["OpenAIBackend", "split_tokens", "SHAPE_RETRIES"]
