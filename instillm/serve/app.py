"""The FastAPI app: OpenAI's /v1/models, /v1/chat/completions and /v1/completions over one model.

Handlers run on the event loop: they validate the body (pydantic, `protocol`), render chat
prompts with the training template (`Renderer.prompt_text`, i.e. add_generation_prompt),
tokenize, check the token budget against `max_length` (`calls`), and hand the rows to the
`Engine`, whose thread alone touches the model.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI

from instillm.errors import ConfigError, InstillmError, check_min_int
from instillm.serve.calls import DEFAULT_MAX_TOKENS, Call, ServedModel, respond
from instillm.serve.engine import Engine
from instillm.serve.errors import APIError, install_error_handlers, require_api_key
from instillm.serve.protocol import ChatRequest, CompletionRequest

# --------------------------------------------------------------------------------------------
# the app


def _routes(app: FastAPI, served: ServedModel, api_key: str | None) -> None:
    auth = [Depends(require_api_key(api_key))]

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict[str, Any]:
        card = {"id": served.name, "object": "model", "created": app.state.created, "owned_by": "instillm",
                "max_model_len": served.max_length}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(req: ChatRequest) -> Any:
        served.check_model(req.model)
        try:
            prompt = served.renderer.prompt_text([{"role": m.role, "content": m.text()} for m in req.messages])
        except InstillmError as e:
            raise APIError(400, f"messages: {e}", "messages", "invalid_value") from e
        return await respond(Call(served, req, [prompt], "messages", chat=True))

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest) -> Any:
        served.check_model(req.model)
        return await respond(Call(served, req, req.prompts(), "prompt", chat=False))


def _check_settings(max_batch_size: int, batch_wait_ms: float, max_length: int | None,
                    default_max_tokens: int) -> None:
    problems = []
    check_min_int(problems, "max_batch_size", max_batch_size)
    if not isinstance(batch_wait_ms, (int, float)) or batch_wait_ms < 0:
        problems.append(f"batch_wait_ms: must be a number >= 0 (milliseconds), got {batch_wait_ms!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        problems.append(f"max_length: must be an integer >= 2 (tokens), got {max_length!r}")
    check_min_int(problems, "default_max_tokens", default_max_tokens)
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
) -> FastAPI:
    """An OpenAI-compatible app serving `model` (a saved model directory or hub id).

    `max_length` caps prompt + completion tokens (default: the model's max_position_embeddings);
    `batch_wait_ms` is how long the worker waits for more requests before decoding a batch of up
    to `max_batch_size` rows. `app.state.stats` counts requests and Generator calls. `device`:
    "auto" (CUDA when available), "cpu", "cuda:N"; `app.state.device` says where the model runs.
    """
    from instillm.llm.generation import Generator
    from instillm.models.loading import load_local

    _check_settings(max_batch_size, batch_wait_ms, max_length, default_max_tokens)
    local = load_local(model, template, device)
    # The worker's own tokenizer and renderer (same files): tokenizers are not shared across threads.
    worker_tok, worker_renderer = local.fresh_tokenizer()
    generator = Generator(local.model, worker_tok, worker_renderer, max_length=max_length)
    engine = Engine(generator, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms)
    served = ServedModel(_served_name(model, model_name), engine, local.renderer, generator.max_length,
                         default_max_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="instillm serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.served = served
    app.state.stats = engine.stats
    app.state.device = str(local.device)
    app.state.created = int(time.time())
    install_error_handlers(app)
    _routes(app, served, api_key)
    return app
