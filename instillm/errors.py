"""One exception hierarchy: every error instillm raises on purpose is an InstillmError."""

from __future__ import annotations


class InstillmError(Exception):
    """Base class: the message says what went wrong and which setting or row to change."""


class ConfigError(InstillmError):
    """A setting is invalid; the message names the field."""


class DataError(InstillmError):
    """Input data cannot be read or holds no valid row."""


class RowError(DataError):
    """One input row is invalid; `reason` is a short code used for counts and rejects files."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TemplateError(InstillmError):
    """A chat template cannot render a conversation consistently for training."""


class RenderError(InstillmError):
    """An example cannot be turned into input ids and labels (e.g. nothing left to train)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ModelError(InstillmError):
    """A model or tokenizer cannot be loaded or built."""


def check_min_int(problems: list[str], name: str, value: object, minimum: int = 1) -> None:
    """Append `name: must be an integer >= minimum, got value` to `problems` unless `value` is such
    an integer (a bool is not); the one wording of this check across the configs."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{name}: must be an integer >= {minimum}, got {value!r}")
