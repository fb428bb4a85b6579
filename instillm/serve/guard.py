"""`RequestGuard`: a pure ASGI middleware that checks a request before its body is read.

In this order: the API key (401), for requests with a body its type (415 unless JSON: a web page
can POST `text/plain` to a local server without asking) and its size (413 when Content-Length
says more than `max_bytes`). Then it reads the body itself, counting bytes as they arrive, so a
chunked body without Content-Length is cut at the limit too, and hands the app the buffered body.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from instillm.serve.errors import APIError, auth_error

WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class _ClientLeft(Exception):
    """The client disconnected while its body was read."""


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (`application/json`, `...+json`; parameters allowed)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _too_large(max_bytes: int) -> APIError:
    return APIError(
        413, f"the request body is larger than max_request_bytes={max_bytes} bytes", code="request_too_large"
    )


def _declared_size(headers: Headers) -> int | None:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


class RequestGuard:
    """Auth, content type and size checks before the body is read; the body is read within the limit."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_bytes: int) -> None:
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope, Headers(scope=scope))
        if refusal is not None:
            return await refusal.response()(scope, receive, send)
        if scope["method"] not in WITH_BODY:
            return await self.app(scope, receive, send)
        try:
            body = await self._read(receive)
        except _ClientLeft:
            return None
        if body is None:
            return await _too_large(self.max_bytes).response()(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    def _refusal(self, scope: Scope, headers: Headers) -> APIError | None:
        """The error answered from the headers alone (None: go on)."""
        error = auth_error(headers.get("authorization", ""), self.api_key)
        if error is not None or scope["method"] not in WITH_BODY:
            return error
        if not is_json(headers.get("content-type")):
            got = headers.get("content-type") or "none"
            return APIError(415, f"Content-Type must be application/json (got {got})", code="unsupported_media_type")
        size = _declared_size(headers)
        return _too_large(self.max_bytes) if size is not None and size > self.max_bytes else None

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes max_bytes."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that gives `body` as one message, then what the server says (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
