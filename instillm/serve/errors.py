"""Errors in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, and the API key check.

Validation errors are 400 (not FastAPI's 422) with one message naming every bad field.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as OpenAI's error body with HTTP `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


# --------------------------------------------------------------------------------------------
# errors and auth


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def _short_repr(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters (a bad value may be megabytes long)."""
    text = repr(value[: limit + 1] if isinstance(value, str) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def _validation_message(errors: list[dict[str, Any]]) -> str:
    msgs = []
    for e in errors:
        where = _loc(tuple(e.get("loc", ())))
        if e.get("type") == "extra_forbidden":
            msgs.append(f"{where}: not supported by instillm serve (unknown field)")
        elif e.get("type") == "missing":
            msgs.append(f"{where}: required")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {_short_repr(got)})"
            msgs.append(f"{where}: {e.get('msg', 'invalid')}{shown}")
    return "; ".join(msgs)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        param = _loc(tuple(errors[0].get("loc", ()))) if errors else None
        return APIError(400, _validation_message(errors), param, "invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request %s %s failed", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()


def auth_error(header: str, api_key: str | None) -> APIError | None:
    """The 401 for an `Authorization` header that does not carry `Bearer API_KEY` (None: fine, or no key)."""
    if api_key is None:
        return None
    scheme, _, token = header.partition(" ")
    if not header:
        return APIError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return APIError(401, "incorrect API key in the Authorization header", code="invalid_api_key")
    return None
