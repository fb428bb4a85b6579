"""Request bodies of the OpenAI-compatible API, as pydantic models (unknown fields are errors).

Only what `instillm serve` honours is accepted: a field it would silently ignore (`logprobs`,
`tools`, `response_format`, ...) is rejected with a 400 naming it, and penalties other than 0
are refused. `user` and `name` are accepted and ignored (they do not change the answer).
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_N = 128  # samples per request; n rows are decoded per prompt


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Body):
    """One part of a message's content given as a list (only text parts are supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    """A chat message; `content` is a string or a list of text parts (joined)."""

    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]
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
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: Union[str, list[str], None]) -> Union[str, list[str], None]:
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
    def _one_budget(self) -> "ChatRequest":
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

    prompt: Union[str, list[str]]

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        if isinstance(v, list) and not v:
            raise ValueError("needs at least one prompt")
        return v

    def prompts(self) -> list[str]:
        """`prompt` as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def budget_field(self) -> str:
        """The name of the field that sets the token budget."""
        return "max_tokens"
