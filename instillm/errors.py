"""One exception hierarchy: every error instillm raises on purpose is an InstillmError."""

from __future__ import annotations

from collections.abc import Sequence


class InstillmError(Exception):
    """Base class: the message says what went wrong and which setting or row to change."""


class ConfigError(InstillmError):
    """A setting is invalid; the message names the field. `problems`: every problem found, each
    `path: message` (one item, the message, for an error raised with a plain message)."""

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]

    @classmethod
    def of(cls, problems: Sequence[str], title: str | None = None) -> ConfigError:
        """One error for `problems`: the problem itself when there is one; several on one line
        (`a: ...; b: ...`) without a `title`, else a `title:` line and one `  - path: message` each."""
        if len(problems) == 1 or title is None:
            return cls("; ".join(problems), problems)
        return cls(f"{title}:\n" + "\n".join(f"  - {p}" for p in problems), problems)


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
    an integer (a bool is not); the one wording of this check across the configs. Defined here so
    that `instillm.errors` imports nothing; configs use it from `instillm.config` with the other checks."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{name}: must be an integer >= {minimum}, got {value!r}")
