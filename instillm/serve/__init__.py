"""`instillm serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) for a tuned model.

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, with OpenAI's
request and response bodies (streaming as server-sent events ending in `data: [DONE]`), so the
official `openai` client and every OpenAI-compatible tool can use a model instillm trained.

- Chat prompts are rendered with the model's saved chat template exactly as training renders
  them (`Renderer.prompt_text`); completion prompts are used verbatim (no BOS added).
- `temperature` 0 is greedy; otherwise temperature/top_p sampling, one seed per sample (from
  `seed` when given, so answers are reproducible and independent of batching).
- Concurrent requests are batched: one worker thread owns the model (`engine.Engine`), collects
  queued requests for up to `batch_wait_ms` and decodes those with equal decoding options
  (greedy or temperature/top_p, max_tokens, stop) in one `Generator` call. Greedy answers equal
  the answers each request gets alone. A response (and a stream's last chunk) comes when the
  batch it was decoded in is done.
- Streaming sends text as tokens are generated, holding back only what could still change.
- Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`; bad bodies are
  400 with a message naming the field (strict types: `"5"` or `true` is not an integer; lone
  surrogates are refused); with `api_key`, a missing/wrong Bearer token is 401.
- Hostile input is bounded: the key (401), Content-Type (415 unless JSON) and size (413 over
  `max_request_bytes`, chunked bodies included) are checked before a body is read; a request
  asks for at most `max_rows` rows (prompts x n); parsing, rendering and tokenizing happen off
  the event loop, and a prompt too long for the context is refused before it is tokenized.
- A client that disconnects is not decoded for: its queued job is dropped, its running rows
  leave the batch at the next decode step.
- Not supported (rejected with 400, never ignored): logprobs, tools, response_format, echo,
  suffix, token-id prompts, penalties other than 0.

The server binds 127.0.0.1 by default; `serve` refuses another address without an API key
unless `allow_remote_without_key` (`--allow-remote-without-key`), and then warns.
"""

from instillm.serve.app import create_app
from instillm.serve.engine import EngineStats
from instillm.serve.errors import APIError
from instillm.serve.run import ServerHandle, serve, start_in_thread

__all__ = ["create_app", "serve", "start_in_thread", "ServerHandle", "EngineStats", "APIError"]
