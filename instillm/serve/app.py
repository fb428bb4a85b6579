"""The FastAPI app: OpenAI's /v1/models, /v1/chat/completions and /v1/completions over one model.

`guard.RequestGuard` checks the API key, the Content-Type (JSON only) and the size (at most
`max_request_bytes`) before a body is read, and reads it within the limit. Handlers only move
bytes: a preparation thread (`calls.ServedModel.prepare`) validates the body (pydantic,
`protocol`), renders chat prompts with the training template (`Renderer.prompt_text`, i.e.
add_generation_prompt), checks rows and length, tokenizes and checks the token budget; the
`Engine`'s thread alone touches the model. So the event loop stays free: `/v1/models` answers
while the largest allowed request is prepared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from instillm.config import check_choice
from instillm.errors import ConfigError, check_min_int
from instillm.serve.calls import DEFAULT_MAX_ROWS, DEFAULT_MAX_TOKENS, ServedModel, respond
from instillm.serve.engine import BatchEngine, Engine
from instillm.serve.errors import install_error_handlers
from instillm.serve.guard import RequestGuard

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024

# --------------------------------------------------------------------------------------------
# the app


def _routes(app: FastAPI, served: ServedModel) -> None:
    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        card = {
            "id": served.name,
            "object": "model",
            "created": app.state.created,
            "owned_by": "instillm",
            "max_model_len": served.max_length,
        }
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await respond(await served.prepare(await request.body(), chat=True), request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await respond(await served.prepare(await request.body(), chat=False), request)


def _check_settings(
    max_batch_size: int,
    batch_wait_ms: float,
    max_length: int | None,
    default_max_tokens: int,
    max_request_bytes: int,
    max_rows: int,
) -> None:
    problems: list[str] = []
    check_min_int(problems, "max_batch_size", max_batch_size)
    check_min_int(problems, "max_request_bytes", max_request_bytes)
    check_min_int(problems, "max_rows", max_rows)
    if not isinstance(batch_wait_ms, (int, float)) or batch_wait_ms < 0:
        problems.append(f"batch_wait_ms: must be a number >= 0 (milliseconds), got {batch_wait_ms!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        problems.append(f"max_length: must be an integer >= 2 (tokens), got {max_length!r}")
    check_min_int(problems, "default_max_tokens", default_max_tokens)
    if problems:
        raise ConfigError("; ".join(problems))


def _check_scheduler(scheduler: str, prefix_cache_tokens: int, priority_rows: int) -> None:
    problems: list[str] = []
    check_choice(problems, "scheduler", scheduler, ("continuous", "static"))
    check_min_int(problems, "prefix_cache_tokens", prefix_cache_tokens, 0)
    check_min_int(problems, "priority_rows", priority_rows, 0)
    if scheduler == "static" and isinstance(priority_rows, int) and priority_rows > 0:
        problems.append("priority_rows: needs scheduler 'continuous' (the static batcher decodes whole batches)")
    if problems:
        raise ConfigError("; ".join(problems))


def _served_name(model: str | Path, model_name: str | None) -> str:
    if model_name:
        return model_name
    p = Path(model)
    return p.resolve().name if p.is_dir() else str(model)


def create_app(
    model: str | Path,
    *,
    api_key: str | None = None,
    model_name: str | None = None,
    max_batch_size: int = 32,
    batch_wait_ms: float = 5.0,
    max_length: int | None = None,
    template: str = "auto",
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    device: str = "auto",
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_rows: int = DEFAULT_MAX_ROWS,
    scheduler: str = "continuous",
    prefix_cache_tokens: int = 4096,
    priority_rows: int = 0,
) -> FastAPI:
    """An OpenAI-compatible app serving `model` (a saved model directory or hub id).

    `max_length` caps prompt + completion tokens (default: the model's max_position_embeddings);
    `batch_wait_ms` is how long the worker waits for more requests before decoding a batch of up
    to `max_batch_size` rows. `app.state.stats` counts requests, Generator calls, decoded tokens
    and cancellations. `device`: "auto" (CUDA when available), "cpu", "cuda:N";
    `app.state.device` says where the model runs. `scheduler`: "continuous" (requests join the
    running batch at the next step and leave when they end; prompts' shared prefixes are
    prefilled once, `prefix_cache_tokens` keeps recent prompts' keys/values, 0 turns it off) or
    "static" (a collected batch is decoded to its end before the next, requests with identical
    options only; kept for comparison). `priority_rows` > 0 (continuous only) serves short
    requests first (`Engine`: at most 32 new tokens asked): while one runs or waits, a step decodes
    the short requests' rows and others up to `priority_rows` rows, and long requests wait to join;
    short requests' latency for throughput, where steps of more rows cost more (a CPU). 0 decodes
    the whole batch at every step. A body over `max_request_bytes` is refused
    (413) before it is read; a request over `max_rows` rows (prompts x n) is refused (400), so
    no Generator call holds more than max(max_batch_size, max_rows) rows.
    """
    from instillm.llm.generation import Generator
    from instillm.models.loading import load_local

    _check_settings(max_batch_size, batch_wait_ms, max_length, default_max_tokens, max_request_bytes, max_rows)
    _check_scheduler(scheduler, prefix_cache_tokens, priority_rows)
    if api_key is not None and not api_key:
        raise ConfigError("api_key: empty; give a key or None (no key)")
    local = load_local(model, template, device)
    # The worker's own tokenizer and renderer (same files): tokenizers are not shared across threads.
    worker_tok, worker_renderer = local.fresh_tokenizer()
    generator = Generator(local.model, worker_tok, worker_renderer, max_length=max_length)
    engine: Engine | BatchEngine
    if scheduler == "static":
        engine = BatchEngine(generator, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms)
    else:
        engine = Engine(
            generator,
            max_batch_size,
            batch_wait_ms,
            prefix_cache_tokens=prefix_cache_tokens,
            priority_rows=priority_rows,
        )
    tools = [(local.tokenizer, local.renderer), local.fresh_tokenizer()]  # one per preparation lane
    served = ServedModel(
        _served_name(model, model_name), engine, tools, generator.max_length, default_max_tokens, max_rows
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            served.close()
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="instillm serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served = served
    app.state.stats = engine.stats
    app.state.device = str(local.device)
    app.state.created = int(time.time())
    install_error_handlers(app)
    app.add_middleware(RequestGuard, api_key=api_key, max_bytes=max_request_bytes)
    _routes(app, served)
    return app
