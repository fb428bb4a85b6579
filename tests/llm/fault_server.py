"""A scripted OpenAI-compatible endpoint on 127.0.0.1 that misbehaves on purpose.

Every request carries its script in its text: the prompt (completion) or the last message
(chat) is JSON `{"id": ..., "script": [action, ...]}`; attempt k of that id performs
`script[min(k, len - 1)]`. Actions:

- "ok": 200 with `n` choices, choice k's text `answer:{id}:{k}`.
- "500", "503", "400", "404" ...: that status with an OpenAI-style error body.
- "429:S": 429 with `Retry-After: S`.
- "slow:S": sleep S seconds, then "ok".
- "badjson": 200, JSON content type, a body cut off mid-object (invalid JSON).
- "truncated": 200 whose Content-Length promises more bytes than are sent (connection closes).
- "html": 200 with an HTML page (no JSON at all).
- "empty": 200 with `choices: []`; "null": content null; "short": one choice whatever `n`.

The server counts, per id, requests received (`attempts`) and successful answers sent
(`answered`), and keeps each request's body, arrival time and (arrival, answer) span
(monotonic seconds); `max_overlap(ids)` is the most of those requests handled at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, defaultdict

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

PROMPT_TOKENS = 7
TOKENS_PER_CHOICE = 4


def scripted(rid: str, *script: str) -> str:
    """The text of a request that performs `script` (default: answer at once)."""
    return json.dumps({"id": rid, "script": list(script) or ["ok"]})


class FaultServer:
    """The app plus its counters; `start()` runs it in a uvicorn thread, `base_url` ends in /v1."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.bodies: dict[str, list[dict]] = defaultdict(list)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.spans: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (arrival, answer) per attempt
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self._chat)
        self.app.post("/v1/completions")(self._completion)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        return await self._handle(body, body["messages"][-1]["content"], chat=True)

    async def _completion(self, request: Request) -> Response:
        body = await request.json()
        return await self._handle(body, body["prompt"], chat=False)

    async def _handle(self, body: dict, text: str, chat: bool) -> Response:
        spec = json.loads(text)
        rid, script = spec["id"], spec["script"]
        start = time.monotonic()
        with self.lock:
            attempt = self.attempts[rid]
            self.attempts[rid] += 1
            self.bodies[rid].append(body)
            self.times[rid].append(start)
        try:
            return await self._act(script[min(attempt, len(script) - 1)], rid, body, chat)
        finally:
            with self.lock:
                self.spans[rid].append((start, time.monotonic()))

    def max_overlap(self, ids: list[str]) -> int:
        """The most requests of `ids` the server was handling at one moment."""
        events = sorted((t, d) for i in ids for a, b in self.spans[i] for t, d in ((a, 1), (b, -1)))
        now = best = 0
        for _, d in events:
            now += d
            best = max(best, now)
        return best

    async def _act(self, action: str, rid: str, body: dict, chat: bool) -> Response:
        n = int(body.get("n") or 1)
        if action.startswith("slow:"):
            await asyncio.sleep(float(action.split(":")[1]))
            action = "ok"
        if action == "ok":
            with self.lock:
                self.answered[rid] += 1
            return JSONResponse(_completion_body(rid, n, chat, body.get("model", "")))
        if action.startswith("429:"):
            return _error(429, "rate limited", {"Retry-After": action.split(":")[1]})
        if action.isdigit():
            return _error(int(action), f"scripted {action}")
        if action == "badjson":
            return Response('{"id": "x", "object": "chat.completion", "choices": [{"ind', media_type="application/json")
        if action == "truncated":
            full = json.dumps(_completion_body(rid, n, chat, ""))
            return Response(
                full[: len(full) // 2], media_type="application/json", headers={"content-length": str(len(full))}
            )
        if action == "html":
            return Response("<html><body>502 Bad Gateway (but 200)</body></html>", media_type="text/html")
        data = _completion_body(rid, n, chat, body.get("model", ""))
        if action == "empty":
            data["choices"] = []
        elif action == "null":
            data["choices"][0]["message" if chat else "text"] = {"role": "assistant", "content": None} if chat else None
        elif action == "short":
            data["choices"] = data["choices"][:1]
        else:
            raise ValueError(f"unknown scripted action {action!r}")
        return JSONResponse(data)

    def start(self) -> FaultServer:
        """Serve on a free 127.0.0.1 port in a daemon thread; returns self once it listens."""
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="fault-server")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fault server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)


def _completion_body(rid: str, n: int, chat: bool, model: str) -> dict:
    """An OpenAI chat.completion or text_completion body with n choices."""
    if chat:
        choices = [
            {"index": k, "message": {"role": "assistant", "content": f"answer:{rid}:{k}"}, "finish_reason": "stop"}
            for k in range(n)
        ]
    else:
        choices = [
            {"index": k, "text": f"answer:{rid}:{k}", "finish_reason": "stop", "logprobs": None} for k in range(n)
        ]
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": TOKENS_PER_CHOICE * n,
        "total_tokens": PROMPT_TOKENS + TOKENS_PER_CHOICE * n,
    }
    return {
        "id": f"cmpl-{rid}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    """An OpenAI-style error body with `status`."""
    return JSONResponse(
        {"error": {"message": message, "type": "scripted", "code": status}}, status_code=status, headers=headers
    )
