"""Answer checkers: `match(prediction, reference) -> bool`, exact after normalisation by default.

Normalisation (every checker): strip each line, collapse runs of spaces, drop blank lines and one
trailing period. Case is kept (upper/lowercase tasks depend on it). A family may accept
equivalent forms: JSON with any whitespace or key order, number lists with commas or spaces,
`*` bullets, `1)` numbering, and chain-of-thought answers judged on their final `Answer:` part.
"""

from __future__ import annotations

import json
import re

_SPACES = re.compile(r"[ \t]+")
_NUMBER_LIST = re.compile(r"-?\d+(?:[\s,]+-?\d+)*")
_BULLET = re.compile(r"^[-*•]\s*")
_NUMBERED = re.compile(r"^(\d+)[.)]\s*")
_ANSWER = re.compile(r"answer\s*:", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lines stripped with single spaces, blank lines dropped, one trailing period removed."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()]
    out = "\n".join(line for line in lines if line)
    return out[:-1].rstrip() if out.endswith(".") else out


def exact(prediction: str, reference: str) -> bool:
    """Equal after normalisation."""
    return normalise(prediction) == normalise(reference)


def json_equal(prediction: str, reference: str) -> bool:
    """Same JSON value (any whitespace or key order); otherwise exact."""
    try:
        return json.loads(prediction) == json.loads(reference)
    except (ValueError, TypeError):
        return exact(prediction, reference)


def number_list(prediction: str, reference: str) -> bool:
    """Same integers in the same order, separated by spaces and/or commas."""
    p, r = normalise(prediction), normalise(reference)
    if not (_NUMBER_LIST.fullmatch(p) and _NUMBER_LIST.fullmatch(r)):
        return p == r
    return re.findall(r"-?\d+", p) == re.findall(r"-?\d+", r)


def csv_fields(prediction: str, reference: str) -> bool:
    """One line whose comma-separated fields equal the reference's (spaces around commas ignored)."""
    p, r = normalise(prediction), normalise(reference)
    if "\n" in p:
        return False
    return [f.strip() for f in p.split(",")] == [f.strip() for f in r.split(",")]


def bullets(prediction: str, reference: str) -> bool:
    """The same items, one per line, each behind a `-`, `*` or `•` bullet."""

    def items(text: str) -> list[str] | None:
        lines = normalise(text).splitlines()
        if not all(_BULLET.match(line) for line in lines):
            return None
        return [_BULLET.sub("", line) for line in lines]

    p = items(prediction)
    return p is not None and p == items(reference)


def numbered(prediction: str, reference: str) -> bool:
    """The same items, one per line, numbered 1. 2. … (or 1) 2) …) in order."""

    def items(text: str) -> list[str] | None:
        lines = normalise(text).splitlines()
        marks = [_NUMBERED.match(line) for line in lines]
        if not all(m and int(m.group(1)) == i for i, m in enumerate(marks, 1)):
            return None
        return [_NUMBERED.sub("", line) for line in lines]

    p = items(prediction)
    return p is not None and p == items(reference)


def final_answer(text: str) -> str:
    """The part after the last `Answer:` (the whole text when there is none)."""
    parts = _ANSWER.split(text)
    return parts[-1]


def answer_part(prediction: str, reference: str) -> bool:
    """Chain of thought: the final answers agree (the rationale is not scored)."""
    return exact(final_answer(prediction), final_answer(reference))
