"""One request through the engine: prompts → token ids → rows → OpenAI response or SSE stream.

`ServedModel` holds the handler-side tokenizer and renderer (the engine's thread has its own:
HF fast tokenizers are not safe to share between threads) and checks the token budget.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from instillm.llm.generation import GenerateOptions, GenerationOutput, sample_seed
from instillm.serve.engine import Engine, Job
from instillm.serve.errors import APIError

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256  # when a request gives no max_tokens (capped by what the context leaves)


class ServedModel:
    """The model, its engine, and the handler-side renderer/tokenizer."""

    def __init__(self, name: str, engine: Engine, renderer: Any, max_length: int,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        self.name, self.engine, self.renderer = name, engine, renderer
        self.tokenizer = renderer.tokenizer
        self.max_length = max_length
        self.default_max_tokens = default_max_tokens

    def check_model(self, name: str) -> None:
        """404 unless `name` is the served model."""
        if name != self.name:
            raise APIError(404, f"model: {name!r} is not served here; this server serves {self.name!r}",
                           "model", "model_not_found")

    def encode(self, prompts: list[str], field: str) -> list[list[int]]:
        """Token ids of rendered prompts (no special tokens added: the template has them)."""
        ids = [list(x) for x in self.tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]]
        for i, x in enumerate(ids):
            if not x:
                where = field if len(ids) == 1 else f"{field}.{i}"
                raise APIError(400, f"{where}: the prompt is empty (0 tokens)", where, "invalid_value")
        return ids

    def budget(self, ids: list[list[int]], requested: int | None, field: str) -> int:
        """max_new_tokens for these prompts; 400 when prompt + requested exceeds max_length."""
        longest = max(len(x) for x in ids)
        room = self.max_length - longest
        if requested is None:
            if room < 1:
                raise APIError(400, f"the prompt has {longest} tokens, no room left within max_length="
                               f"{self.max_length} of {self.name!r}; shorten it", field, "context_length_exceeded")
            return min(self.default_max_tokens, room)
        if longest + requested > self.max_length:
            raise APIError(400, f"{field}: the prompt has {longest} tokens and {field} is {requested}: "
                           f"{longest + requested} > max_length={self.max_length} of {self.name!r}; "
                           f"shorten the prompt or lower {field}", field, "context_length_exceeded")
        return requested


def _options(req: Any, max_new_tokens: int, batch_size: int) -> GenerateOptions:
    """Decoding options: equal for all greedy requests with the same budget and stop strings."""
    return GenerateOptions.sampling(req.temperature, req.top_p, max_new_tokens=max_new_tokens,
                                    stop_strings=req.stop_strings(), batch_size=batch_size)


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
    return {"index": i, "message": {"role": "assistant", "content": o.text},
            "finish_reason": o.finish_reason, "logprobs": None}


def _text_choice(i: int, o: GenerationOutput) -> dict[str, Any]:
    return {"index": i, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}


class Call:
    """One request on its way through the engine: its rows, ids and response envelope."""

    def __init__(self, served: ServedModel, req: Any, prompts: list[str], field: str, chat: bool) -> None:
        self.served, self.req, self.chat = served, req, chat
        self.ids = served.encode(prompts, field)
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

    async def run(self) -> dict[str, Any]:
        """Decode and answer the whole response body."""
        job = Job(self.rows, self.seeds, self.options)
        outputs = await asyncio.wrap_future(self.served.engine.submit(job))
        choice = _chat_choice if self.chat else _text_choice
        return {**self.envelope(self.object), "choices": [choice(i, o) for i, o in enumerate(outputs)],
                "usage": _usage(self.ids, outputs)}

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events: chunks as text is generated, then `data: [DONE]`."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_delta(row: int, text: str) -> None:  # worker thread
            loop.call_soon_threadsafe(events.put_nowait, (row, text))

        job = Job(self.rows, self.seeds, self.options, on_delta=on_delta)
        future = asyncio.wrap_future(self.served.engine.submit(job))
        future.add_done_callback(lambda _: events.put_nowait(None))
        sent = [""] * len(self.rows)
        if self.chat:
            for i in range(len(self.rows)):
                yield self._event(i, {"role": "assistant", "content": ""})
        while (item := await events.get()) is not None:
            row, text = item
            sent[row] += text
            yield self._event(row, text)
        try:
            outputs = future.result()
        except Exception as e:  # the status line is sent already: report in the stream
            logger.exception("streamed generation failed")
            yield _sse({"error": {"message": f"generation failed: {e}", "type": "server_error",
                                  "param": None, "code": None}})
            yield "data: [DONE]\n\n"
            return
        for i, o in enumerate(outputs):
            yield self._final(i, o, sent[i])
        if self.include_usage:
            yield _sse({**self.envelope(self._chunk_object()), "choices": [], "usage": _usage(self.ids, outputs)})
        yield "data: [DONE]\n\n"

    def _final(self, i: int, o: GenerationOutput, sent: str) -> str:
        """The last chunk of choice `i`: the text not streamed yet and the finish reason."""
        if not o.text.startswith(sent):  # cannot happen with the engine's hold-back; say so if it does
            logger.warning("choice %d: streamed text %r is not a prefix of the final text %r", i, sent, o.text)
            return self._event(i, "", o.finish_reason)
        return self._event(i, o.text[len(sent):], o.finish_reason)

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


async def respond(call: Call) -> Any:
    if call.req.stream:
        return StreamingResponse(call.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return JSONResponse(await call.run())
