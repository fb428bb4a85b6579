"""Request bodies of the OpenAI-compatible API, as pydantic models (unknown fields are errors).

Only what `instillm serve` honours is accepted: a field it would silently ignore (`logprobs`,
`tools`, `response_format`, ...) is rejected with a 400 naming it, and penalties other than 0
are refused. `user` and `name` are accepted and ignored (they do not change the answer).

Types are strict: an integer field takes a JSON integer only (not `"5"`, `true` or `5.0`), a
boolean only `true`/`false`, a number an integer or a float. `parse_body` decodes a body (JSON,
UTF-8) and refuses strings with lone surrogates (`"\ud800"`), which JSON allows but no text can
hold, naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from instillm.serve.errors import APIError

MAX_N = 128  # samples per request; n rows are decoded per prompt


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Body):
    """One part of a message's content given as a list (only text parts are supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    """A chat message; `content` is a string or a list of text parts (joined)."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        """The content as one string."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Body):
    """`include_usage`: send a last chunk with the token usage (and no choices)."""

    include_usage: bool = False


class _Sampling(_Body):
    """Fields shared by chat and completion requests. `temperature` 0 means greedy decoding."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> str | list[str] | None:
        values = [v] if isinstance(v, str) else (v or [])
        if any(not s for s in values):
            raise ValueError("stop strings must be non-empty")
        return v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0:
            raise ValueError("not supported by instillm serve (only 0, no penalty)")
        return v

    def stop_strings(self) -> tuple[str, ...]:
        """`stop` as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def new_tokens(self) -> int | None:
        """The requested token budget (None: the server's default)."""
        return self.max_tokens


class ChatRequest(_Sampling):
    """POST /v1/chat/completions. `max_completion_tokens` is the newer name of `max_tokens`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_budget(self) -> ChatRequest:
        a, b = self.max_tokens, self.max_completion_tokens
        if a is not None and b is not None and a != b:
            raise ValueError(f"max_tokens ({a}) and max_completion_tokens ({b}) differ; give one of them")
        return self

    def new_tokens(self) -> int | None:
        """max_completion_tokens, else max_tokens (None: the server's default)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def budget_field(self) -> str:
        """The name of the field that set the token budget, for error messages."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


class CompletionRequest(_Sampling):
    """POST /v1/completions. `prompt` is used verbatim: no BOS or template is added."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("needs at least one prompt")
        return v

    def prompts(self) -> list[str]:
        """`prompt` as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def budget_field(self) -> str:
        """The name of the field that sets the token budget."""
        return "max_tokens"


# --------------------------------------------------------------------------------------------
# decoding a body

Body = TypeVar("Body", bound=_Body)


def _valid_text(s: str) -> bool:
    """False for a string with a lone surrogate (it cannot be encoded as UTF-8)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def surrogate_at(data: Any) -> str | None:
    """The dotted path of a string (or key) in `data` holding a lone surrogate; None when there is none."""
    stack: list[tuple[tuple, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and not _valid_text(value):
            return ".".join(map(str, path)) or "body"
        if isinstance(value, dict):
            if not all(_valid_text(k) for k in value):
                return ".".join(map(str, path)) or "body"
            stack.extend(((*path, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in enumerate(value))
    return None


def _json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 when it is not valid UTF-8 JSON or not an object."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError as e:
        raise APIError(400, f"the body is not valid UTF-8: {e}", None, "invalid_json") from e
    except (ValueError, RecursionError) as e:
        raise APIError(400, f"the body is not valid JSON: {e}", None, "invalid_json") from e
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got a JSON {type(data).__name__}", None, "invalid_json")
    return data


def parse_body(body: bytes, model: type[Body]) -> Body:
    """`body` validated as `model`: 400 naming the field for bad JSON, lone surrogates or invalid values."""
    data = _json_object(body)
    where = surrogate_at(data)
    if where is not None:
        raise APIError(
            400,
            f"{where}: contains a lone surrogate (an unpaired \\uD800-\\uDFFF escape); text must be valid Unicode",
            where,
            "invalid_value",
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None
