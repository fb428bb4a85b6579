"""The canonical example: one conversation that flows through every stage of instillm.

A row on disk (JSONL) looks like::

    {"id": "alpaca-17", "source": "alpaca_data.json", "task": "alpaca", "category": "",
     "messages": [{"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "train": true}],
     "meta": {}}

`train` is optional per message and defaults to true for assistant turns and false for
system/user turns (only assistant turns can be trained).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from instillm.errors import RowError

ROLES = ("system", "user", "assistant")
# Valid in JSON strings, but str.splitlines() (and JavaScript) break lines at them: written escaped.
LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


@dataclass(frozen=True)
class Message:
    """One turn of a conversation; `train` marks assistant turns that receive loss."""

    role: str
    content: str
    train: bool | None = None

    @property
    def trained(self) -> bool:
        """Whether this turn receives loss (assistant turns default to true)."""
        if self.role != "assistant":
            return False
        return True if self.train is None else bool(self.train)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `train` is written only when it differs from the default."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.role == "assistant" and self.train is False:
            d["train"] = False
        return d


@dataclass(frozen=True)
class Example:
    """One canonical training/eval example: a validated conversation plus provenance."""

    messages: tuple[Message, ...]
    id: str = ""
    source: str = ""
    task: str = ""
    category: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_messages(self.messages)
        if not self.id:
            object.__setattr__(self, "id", content_id(self.messages))

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """All turns before the final assistant turn (what a model is given at inference)."""
        return self.messages[:-1]

    @property
    def reference(self) -> str:
        """The final assistant turn: the reference answer for evaluation."""
        return self.messages[-1].content

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the canonical on-disk layout."""
        return {
            "id": self.id,
            "source": self.source,
            "task": self.task,
            "category": self.category,
            "messages": [m.to_dict() for m in self.messages],
            "meta": self.meta,
        }

    def to_json(self) -> str:
        """One JSONL line (no trailing newline); ValueError when meta holds NaN or an infinity (not JSON)."""
        return line_safe(json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False))

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> Example:
        """Parse a canonical row; raises RowError with a precise reason."""
        if not isinstance(row, Mapping):
            raise RowError("not_an_object", f"expected a JSON object, got {type(row).__name__}")
        unknown = set(row) - {"id", "source", "task", "category", "messages", "meta"}
        if unknown:
            raise RowError("unknown_field", f"unknown field(s) {sorted(unknown)}")
        if "messages" not in row:
            raise RowError("missing_field", "field 'messages' is missing")
        for key in ("id", "source", "task", "category"):
            if key in row and row[key] is not None and not isinstance(row[key], str):
                raise RowError("wrong_type", f"field '{key}' must be a string")
        meta = row.get("meta") or {}
        if not isinstance(meta, dict):
            raise RowError("wrong_type", "field 'meta' must be an object")
        return cls(
            messages=parse_messages(row["messages"]),
            id=row.get("id") or "",
            source=row.get("source") or "",
            task=row.get("task") or "",
            category=row.get("category") or "",
            meta=meta,
        )


def line_safe(text: str) -> str:
    """JSON text with the non-ASCII line breaks escaped, so that every reader sees one line."""
    for char, escape in LINE_BREAKS.items():
        if char in text:
            text = text.replace(char, escape)
    return text


def parse_messages(raw: Any) -> tuple[Message, ...]:
    """Turn a list of {role, content[, train]} dicts into Messages, checking types."""
    if not isinstance(raw, list):
        raise RowError("wrong_type", "field 'messages' must be a list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping):
            raise RowError("wrong_type", f"messages[{i}] must be an object")
        for key in ("role", "content"):
            if key not in m:
                raise RowError("missing_field", f"messages[{i}].{key} is missing")
        if not isinstance(m["role"], str):
            raise RowError("wrong_type", f"messages[{i}].role must be a string")
        if not isinstance(m["content"], str):
            raise RowError("wrong_type", f"messages[{i}].content must be a string")
        train = m.get("train")
        if train is not None and not isinstance(train, bool):
            raise RowError("wrong_type", f"messages[{i}].train must be true or false")
        out.append(Message(m["role"], m["content"], train))
    return tuple(out)


def validate_messages(messages: Iterable[Message]) -> None:
    """Check roles, turn order and content; raises RowError naming the first problem.

    Valid: an optional leading system turn, then user/assistant alternating, starting with
    user and ending with a non-empty assistant turn; at least one trained assistant turn.
    """
    msgs = tuple(messages)
    if not msgs:
        raise RowError("empty_conversation", "no messages")
    for i, m in enumerate(msgs):
        if m.role not in ROLES:
            raise RowError("unknown_role", f"messages[{i}].role is {m.role!r}; expected one of {ROLES}")
        if m.role == "system" and i != 0:
            raise RowError("non_alternating_turns", f"system turn at position {i}; only the first turn may be system")
    turns = msgs[1:] if msgs[0].role == "system" else msgs
    if not turns:
        raise RowError("empty_conversation", "only a system turn")
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise RowError(
                "non_alternating_turns",
                f"turn {i} is {m.role!r} but {expected!r} was expected (user and assistant must alternate)",
            )
    if turns[-1].role != "assistant":
        raise RowError("no_response", "conversation ends with a user turn; nothing to answer")
    for i, m in enumerate(msgs):
        if m.role == "assistant" and not m.content.strip():
            raise RowError("empty_response", f"assistant turn messages[{i}] is empty")
        if m.role == "user" and not m.content.strip():
            raise RowError("empty_prompt", f"user turn messages[{i}] is empty")
    if not any(m.trained for m in msgs):
        raise RowError("nothing_to_train", "every assistant turn has train=false")


def content_id(messages: Iterable[Message]) -> str:
    """Stable id from the conversation text (first 16 hex chars of SHA-256)."""
    h = hashlib.sha256()
    for m in messages:
        h.update(m.role.encode())
        h.update(b"\x00")
        h.update(m.content.encode("utf-8", "surrogatepass"))
        h.update(b"\x01")
    return h.hexdigest()[:16]


def from_prompt_completion(prompt: str, completion: str, system: str | None = None, **fields: Any) -> Example:
    """Map prompt/completion data into the canonical conversation form."""
    msgs = [Message("system", system)] if system else []
    msgs += [Message("user", prompt), Message("assistant", completion)]
    return Example(messages=tuple(msgs), **fields)
