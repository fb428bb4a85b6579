"""One request through the engine: body → prompts → token ids → rows → OpenAI response or SSE stream.

Everything but the HTTP exchange happens off the event loop: `ServedModel.prepare` decodes and
validates the body, renders and tokenizes the prompts in a preparation thread ("lane"): bodies up
to 64 KiB in one, larger ones in another, so a client sending big bodies does not delay small
requests. Each lane has its own tokenizer and renderer (HF fast tokenizers are not safe to share
between threads), and the engine's thread has its own too.

Before tokenizing, a request is refused (400) when it asks for more than `max_rows` rows (prompts
x n) or has a prompt with more characters than `max_length` tokens can hold (an upper bound of
characters per token from the vocabulary), so a huge body costs a JSON parse, not a tokenization.

While a request waits for the engine its client is watched (`request.is_disconnected()`, every
`POLL_S`); when it leaves, its job is cancelled: dropped when queued, its rows stopped at the
next decode step when running. A stream also cancels its job when Starlette stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from instillm.errors import InstillmError
from instillm.llm.generation import GenerateOptions, GenerationOutput, sample_seed
from instillm.serve.engine import BatchEngine, Engine, Job
from instillm.serve.errors import APIError
from instillm.serve.protocol import ChatRequest, CompletionRequest, parse_body

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256  # when a request gives no max_tokens (capped by what the context leaves)
DEFAULT_MAX_ROWS = 256  # rows (prompts x n) one request may ask for
SMALL_BODY = 64 * 1024  # bodies up to this size are prepared in the "small" lane
POLL_S = 0.1  # how often a waiting request checks that its client is still there


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def chars_per_token(tokenizer: Any) -> int:
    """An upper bound of the characters one token covers: the longest vocabulary entry.

    Byte-level entries have one character per byte, so a text of C characters has at least
    C / longest tokens. A normalizer may shorten text before tokenizing: then 4x that.
    """
    longest = max((len(t) for t in tokenizer.get_vocab()), default=1)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    no_normalizer = backend is not None and backend.normalizer is None
    return max(longest, 1) * (1 if no_normalizer else 4)


class _Lane:
    """One preparation thread with its own tokenizer and renderer."""

    def __init__(self, name: str, tokenizer: Any, renderer: Any) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"instillm-serve-{name}")
        self.tokenizer, self.renderer = tokenizer, renderer


class ServedModel:
    """The model's engine, the preparation lanes, and the limits a request is checked against.

    `tools`: two (tokenizer, renderer) pairs from the model's files, one per lane.
    """

    def __init__(
        self,
        name: str,
        engine: Engine | BatchEngine,
        tools: Sequence[tuple[Any, Any]],
        max_length: int,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        self.name, self.engine, self.max_length = name, engine, max_length
        self.default_max_tokens, self.max_rows = default_max_tokens, max_rows
        self.lanes = [_Lane(kind, tok, renderer) for kind, (tok, renderer) in zip(("small", "large"), tools)]
        self.max_prompt_chars = max_length * chars_per_token(tools[0][0])

    async def prepare(self, body: bytes, chat: bool) -> Call:
        """The request in `body` (a chat or completion request), checked and tokenized in a lane."""
        lane = self.lanes[0] if len(body) <= SMALL_BODY else self.lanes[-1]
        return await asyncio.get_running_loop().run_in_executor(lane.executor, self._prepare, body, chat, lane)

    def close(self) -> None:
        """Stop the preparation threads."""
        for lane in self.lanes:
            lane.executor.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, body: bytes, chat: bool, lane: _Lane) -> Call:
        req = _parse(body, chat)
        self.check_model(req.model)
        field = "messages" if chat else "prompt"
        prompts = [_render(req, lane.renderer)] if isinstance(req, ChatRequest) else req.prompts()
        self.check_rows(len(prompts), req.n)
        self.check_chars(prompts, field)
        return Call(self, req, self.encode(prompts, field, lane.tokenizer), chat)

    def check_model(self, name: str) -> None:
        """404 unless `name` is the served model."""
        if name != self.name:
            raise APIError(
                404, f"model: {name!r} is not served here; this server serves {self.name!r}", "model", "model_not_found"
            )

    def check_rows(self, prompts: int, n: int) -> None:
        """400 when prompts x n is more than max_rows."""
        if prompts * n > self.max_rows:
            field = "n" if n > 1 else "prompt"
            raise APIError(
                400,
                f"{field}: the request asks for {prompts * n} rows ({prompts} prompt(s) x n={n}); "
                f"this server decodes at most max_rows={self.max_rows} per request",
                field,
                "too_many_rows",
            )

    def check_chars(self, prompts: list[str], field: str) -> None:
        """400 for a prompt with more characters than max_length tokens can hold (not tokenized then)."""
        for i, p in enumerate(prompts):
            if len(p) > self.max_prompt_chars:
                where = field if len(prompts) == 1 else f"{field}.{i}"
                raise APIError(
                    400,
                    f"{where}: the prompt has {len(p)} characters, more than max_length="
                    f"{self.max_length} tokens of {self.name!r} can hold (at most {self.max_prompt_chars} "
                    "characters); shorten it",
                    where,
                    "context_length_exceeded",
                )

    def encode(self, prompts: list[str], field: str, tokenizer: Any) -> list[list[int]]:
        """Token ids of rendered prompts (no special tokens added: the template has them).

        One prompt at a time (one core, not the tokenizer's thread pool), and the first prompt that
        is empty or leaves no room within max_length ends it with a 400: the rest is not tokenized.
        """
        out = []
        for i, p in enumerate(prompts):
            ids = list(tokenizer(p, add_special_tokens=False, verbose=False)["input_ids"])
            self._check_tokens(len(ids), field if len(prompts) == 1 else f"{field}.{i}")
            out.append(ids)
        return out

    def _check_tokens(self, n: int, where: str) -> None:
        if n == 0:
            raise APIError(400, f"{where}: the prompt is empty (0 tokens)", where, "invalid_value")
        if n >= self.max_length:
            raise APIError(
                400,
                f"{where}: the prompt has {n} tokens, no room left within max_length="
                f"{self.max_length} of {self.name!r}; shorten it",
                where,
                "context_length_exceeded",
            )

    def budget(self, ids: list[list[int]], requested: int | None, field: str) -> int:
        """max_new_tokens for these prompts; 400 when prompt + requested exceeds max_length."""
        longest = max(len(x) for x in ids)
        room = self.max_length - longest
        if requested is None:
            if room < 1:
                raise APIError(
                    400,
                    f"the prompt has {longest} tokens, no room left within max_length="
                    f"{self.max_length} of {self.name!r}; shorten it",
                    field,
                    "context_length_exceeded",
                )
            return min(self.default_max_tokens, room)
        if longest + requested > self.max_length:
            raise APIError(
                400,
                f"{field}: the prompt has {longest} tokens and {field} is {requested}: "
                f"{longest + requested} > max_length={self.max_length} of {self.name!r}; "
                f"shorten the prompt or lower {field}",
                field,
                "context_length_exceeded",
            )
        return requested


def _parse(body: bytes, chat: bool) -> ChatRequest | CompletionRequest:
    return parse_body(body, ChatRequest) if chat else parse_body(body, CompletionRequest)


def _render(req: ChatRequest, renderer: Any) -> str:
    """The chat prompt as training renders it (add_generation_prompt)."""
    try:
        return renderer.prompt_text([{"role": m.role, "content": m.text()} for m in req.messages])
    except InstillmError as e:
        raise APIError(400, f"messages: {e}", "messages", "invalid_value") from e


async def _until(aw: asyncio.Future, request: Request, job: Job) -> Any:
    """`await aw`; when the client leaves first, cancel `job` and raise ClientGone (cancelled: cancel too)."""
    try:
        while True:
            done, _ = await asyncio.wait({aw}, timeout=POLL_S)
            if done:
                return aw.result()
            if await request.is_disconnected():
                raise ClientGone
    finally:
        if not aw.done():
            aw.cancel()
            job.cancel()


async def _next_events(events: asyncio.Queue, request: Request, job: Job) -> list[Any]:
    """At least one stream event (waiting as `_until`), and every other one already queued."""
    batch = [await _until(asyncio.ensure_future(events.get()), request, job)]
    while not events.empty():
        batch.append(events.get_nowait())
    return batch


def _options(req: Any, max_new_tokens: int, batch_size: int) -> GenerateOptions:
    """Decoding options: equal for all greedy requests with the same budget and stop strings."""
    return GenerateOptions.sampling(
        req.temperature,
        req.top_p,
        max_new_tokens=max_new_tokens,
        stop_strings=req.stop_strings(),
        batch_size=batch_size,
    )


def _seeds(seed: int | None, n_prompts: int, n: int) -> list[int]:
    """One seed per row (prompt-major): sample i of each prompt gets `sample_seed(seed, i)`.

    The local backend seeds the same way, so a seeded request samples the same text over HTTP
    and in-process; without a seed every row gets a fresh random one.
    """
    return [sample_seed(seed, i) for _ in range(n_prompts) for i in range(n)]


# --------------------------------------------------------------------------------------------
# responses


def _usage(ids: list[list[int]], outputs: list[GenerationOutput]) -> dict[str, int]:
    prompt = sum(len(x) for x in ids)  # each prompt once, however many samples
    completion = sum(o.completion_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_choice(i: int, o: GenerationOutput) -> dict[str, Any]:
    return {
        "index": i,
        "message": {"role": "assistant", "content": o.text},
        "finish_reason": o.finish_reason,
        "logprobs": None,
    }


def _text_choice(i: int, o: GenerationOutput) -> dict[str, Any]:
    return {"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}


class Call:
    """One request on its way through the engine: its rows, ids and response envelope."""

    def __init__(self, served: ServedModel, req: Any, ids: list[list[int]], chat: bool) -> None:
        self.served, self.req, self.chat, self.ids = served, req, chat, ids
        self.job: Job | None = None
        max_new = served.budget(self.ids, req.new_tokens(), req.budget_field())
        self.options = _options(req, max_new, served.engine.max_batch_size)
        self.rows = [x for x in self.ids for _ in range(req.n)]  # choice index = prompt * n + sample
        self.seeds = _seeds(req.seed, len(self.ids), req.n)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (stream_options.include_usage)."""
        return self.req.stream_options is not None and self.req.stream_options.include_usage

    def envelope(self, obj: str) -> dict[str, Any]:
        """The fields every response body and chunk of this request starts with."""
        return {"id": self.id, "object": obj, "created": self.created, "model": self.served.name}

    def start(self, on_delta: Any = None) -> Job:
        """Queue this request's job on the engine."""
        self.job = Job(self.rows, self.seeds, self.options, on_delta=on_delta)
        self.served.engine.submit(self.job)
        return self.job

    def cancel(self) -> None:
        """Stop the job (its client left); nothing once it is done."""
        if self.job is not None and not self.job.future.done():
            self.job.cancel()

    async def run(self, request: Request) -> dict[str, Any]:
        """Decode and answer the whole response body (ClientGone if the client leaves first)."""
        job = self.start()
        outputs = await _until(asyncio.wrap_future(job.future), request, job)
        choice = _chat_choice if self.chat else _text_choice
        return {
            **self.envelope(self.object),
            "choices": [choice(i, o) for i, o in enumerate(outputs)],
            "usage": _usage(self.ids, outputs),
        }

    def streaming(self, request: Request) -> StreamingResponse:
        """The SSE response; the job is queued now and cancelled if the response ends before it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_delta(row: int, text: str) -> None:  # worker thread
            loop.call_soon_threadsafe(events.put_nowait, (row, text))

        job = self.start(on_delta)
        future = asyncio.wrap_future(job.future)
        future.add_done_callback(lambda _: events.put_nowait(None))
        return StreamingResponse(
            self._stream(job, events, future, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
            background=BackgroundTask(self.cancel),
        )

    async def _stream(
        self, job: Job, events: asyncio.Queue, future: asyncio.Future, request: Request
    ) -> AsyncIterator[str]:
        """Server-sent events: chunks as text is generated, then `data: [DONE]`."""
        sent = [""] * len(self.rows)
        if self.chat:
            yield "".join(self._event(i, {"role": "assistant", "content": ""}) for i in range(len(self.rows)))
        try:
            while True:
                batch = await _next_events(events, request, job)
                chunk = "".join(self._delta(sent, row, text) for row, text in filter(None, batch))
                if chunk:
                    yield chunk
                if batch[-1] is None:
                    break
        except ClientGone:
            return
        if not job.cancelled:
            for chunk in self._ending(future, sent):
                yield chunk

    def _delta(self, sent: list[str], row: int, text: str) -> str:
        sent[row] += text
        return self._event(row, text)

    def _ending(self, future: asyncio.Future, sent: list[str]) -> list[str]:
        """The last chunks: the rest of each choice, the usage chunk, [DONE] (or an error event)."""
        try:
            outputs = future.result()
        except Exception as e:  # the status line is sent already: report in the stream
            logger.exception("streamed generation failed")
            return [
                _sse(
                    {
                        "error": {
                            "message": f"generation failed: {e}",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                ),
                "data: [DONE]\n\n",
            ]
        chunks = [self._final(i, o, sent[i]) for i, o in enumerate(outputs)]
        if self.include_usage:
            chunks.append(
                _sse({**self.envelope(self._chunk_object()), "choices": [], "usage": _usage(self.ids, outputs)})
            )
        return chunks + ["data: [DONE]\n\n"]

    def _final(self, i: int, o: GenerationOutput, sent: str) -> str:
        """The last chunk of choice `i`: the text not streamed yet and the finish reason."""
        if not o.text.startswith(sent):  # cannot happen with the engine's hold-back; say so if it does
            logger.warning("choice %d: streamed text %r is not a prefix of the final text %r", i, sent, o.text)
            return self._event(i, "", o.finish_reason)
        return self._event(i, o.text[len(sent) :], o.finish_reason)

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _event(self, i: int, piece: Any, finish: str | None = None) -> str:
        if self.chat:
            delta = piece if isinstance(piece, dict) else ({"content": piece} if piece else {})
            choice = {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": i, "text": piece, "finish_reason": finish, "logprobs": None}
        body = {**self.envelope(self._chunk_object()), "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return _sse(body)


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def respond(call: Call, request: Request) -> Response:
    """The response to a prepared call: JSON, or an SSE stream when it asked for one."""
    if call.req.stream:
        return call.streaming(request)
    try:
        return JSONResponse(await call.run(request))
    except ClientGone:
        return Response(status_code=499)  # nobody is there to read it
