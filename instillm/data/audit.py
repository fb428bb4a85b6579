"""Whole-dataset mask audit: render every row exactly as training does and flag the rows that would
not train as written, with counts, the rows (id and line) behind each flag, and CI thresholds.

Each row is rendered with the training `Renderer` (same template, max_length, truncation policy).
Flags, each with a one-line detail per row. A row carries at most one of the first five (the
first fault training meets: a row the template fails on is not also checked for length) and
may carry duplicate_prompt besides:

  no_trained_token       no token of the row receives loss for a reason other than length: every
                         assistant turn has `train: false` (the schema rejects such a row, so
                         training stops on it; `audit_file` reports it and goes on), or a trained
                         assistant turn renders to no token.
  prompt_too_long        the prompt (every turn before the final assistant turn, rendered for
                         inference and tokenized alone) is max_length tokens or more: no response
                         token fits after it. drop: the row is dropped; error: training stops on
                         it; truncate-prompt: its beginning is cut off (or the row is dropped).
  response_truncated     the row is longer than max_length, its prompt fits, and trained tokens
                         are lost (compared with the same row rendered without a limit): drop or
                         error lose the whole row; truncate-prompt masks a response whose start
                         was cut, or drops the row when no response fits.
  eos_not_trained        a trained assistant turn does not end with the EOS or a known
                         end-of-turn token (the renderer refuses such a template with a
                         TemplateError): the model would never learn to stop.
  template_inconsistent  the template fails on the row: not prefix-consistent (the prompt rendered
                         for generation differs from the training render), an assistant turn not
                         rendered verbatim, a double BOS, or the template raises (e.g. "roles must
                         alternate").
  duplicate_prompt       the rendered prompt text is identical to that of an earlier row (the
                         detail and `first_id`/`first_line` name the first such row).

Rates are flagged rows / rows audited. Thresholds (`exceeded`): `max_flagged` bounds the share
of rows with any flag, `fail_on` bounds one flag's rate; a rate strictly above its bound fails
(0 means "no such row at all").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from jinja2 import TemplateError as JinjaError

from instillm.data.io import one_line, read_rows
from instillm.data.render import Renderer
from instillm.data.schema import Example, Message, content_id, parse_messages
from instillm.errors import ConfigError, DataError, InstillmError, RenderError, RowError, TemplateError

FLAGS = (
    "no_trained_token",
    "prompt_too_long",
    "response_truncated",
    "eos_not_trained",
    "template_inconsistent",
    "duplicate_prompt",
)
UNBOUNDED = 1 << 40  # max_length of the reference render that counts the trained tokens truncation loses
OUTCOME = {
    "drop": "the row is dropped (truncation: drop)",
    "error": "training stops on it (truncation: error)",
    "truncate-prompt": "the start is cut off, a response cut into is masked (truncation: truncate-prompt)",
}


@dataclass(frozen=True)
class FlaggedRow:
    """One flagged row: its id, 1-based line (row number for `audit_examples`) and why."""

    id: str
    line: int
    detail: str
    first_id: str | None = None
    first_line: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON: id, line, detail (+ first_id/first_line for duplicates)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class AuditReport:
    """Per-flag rows of an audited dataset; `n_flagged` counts rows with at least one flag."""

    n_examples: int = 0
    n_flagged: int = 0
    flags: dict[str, list[FlaggedRow]] = field(default_factory=lambda: {f: [] for f in FLAGS})
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Flagged rows per flag (every flag, zeros included)."""
        return {f: len(rows) for f, rows in self.flags.items()}

    def rate(self, flag: str | None = None) -> float:
        """Share of rows carrying `flag` (any flag when None)."""
        n = self.n_flagged if flag is None else len(self.flags[flag])
        return n / self.n_examples if self.n_examples else 0.0

    def exceeded(self, max_flagged: float | None = None, fail_on: dict[str, float] | None = None) -> list[str]:
        """One message per threshold the report is above (empty: it passes)."""
        limits: list[tuple[str | None, float]] = [(None, max_flagged)] if max_flagged is not None else []
        limits += list((fail_on or {}).items())
        return [self._over(f, lim) for f, lim in limits if self.rate(f) > lim]

    def _over(self, flag: str | None, limit: float) -> str:
        n = self.n_flagged if flag is None else len(self.flags[flag])
        what = "rows with any flag" if flag is None else flag
        return f"{what}: {n} of {self.n_examples} rows ({self.rate(flag):.4f}) > {limit:g}"

    def to_json(self, max_flagged: float | None = None, fail_on: dict[str, float] | None = None) -> dict[str, Any]:
        """The JSON printed by `instillm data audit --json`."""
        exceeded = self.exceeded(max_flagged, fail_on)
        return {
            "n_examples": self.n_examples,
            "n_flagged": self.n_flagged,
            "flagged_rate": self.rate(),
            "counts": self.counts,
            "rates": {f: self.rate(f) for f in FLAGS},
            "flags": {f: [r.to_json() for r in rows] for f, rows in self.flags.items()},
            "settings": self.settings,
            "thresholds": {"max_flagged": max_flagged, "fail_on": dict(fail_on or {})},
            "exceeded": exceeded,
            "passed": not exceeded,
        }


Hit = tuple[str, str]  # (flag, detail)


class Auditor:
    """Audits rows one at a time (`add`, `add_untrainable`); `report` holds the result."""

    def __init__(self, renderer: Renderer) -> None:
        """Audit with `renderer`'s template and settings; a limitless twin counts truncation losses."""
        self.renderer = renderer
        self.unbounded = Renderer(renderer.tokenizer, replace(renderer.config, max_length=UNBOUNDED))
        tokens = renderer.tokenizer.convert_ids_to_tokens(sorted(renderer.end_token_ids))
        self.end_strings = tuple(t for t in tokens if t)
        self.prompts: dict[bytes, tuple[str, int]] = {}
        cfg = renderer.config
        settings = {"template": renderer.template_name, "max_length": cfg.max_length, "truncation": cfg.truncation}
        self.report = AuditReport(settings=settings)

    def add(self, ex: Example, line: int) -> None:
        """Render one example as training does and record its flags."""
        self._record(ex.id, line, self._render_hits(ex), lambda: self.renderer.example_prompt_text(ex))

    def add_untrainable(self, row_id: str, line: int, messages: Sequence[Message], detail: str) -> None:
        """Record a row the schema rejects because no assistant turn is trained."""
        hit = ("no_trained_token", detail)
        self._record(row_id, line, [hit], lambda: self.renderer.prompt_text(messages[:-1]))

    def _record(self, row_id: str, line: int, hits: list[Hit], prompt: Callable[[], str]) -> None:
        flagged = [(name, FlaggedRow(row_id, line, detail)) for name, detail in hits]
        dup = self._duplicate(row_id, line, prompt)
        if dup is not None:
            flagged.append(("duplicate_prompt", dup))
        for name, row in flagged:
            self.report.flags[name].append(row)
        self.report.n_examples += 1
        self.report.n_flagged += bool(flagged)

    def _render_hits(self, ex: Example) -> list[Hit]:
        try:
            r = self.renderer.render(ex)
        except RenderError as e:
            return self._length_hits(ex, kept=0) if e.reason == "too_long" else [("no_trained_token", str(e))]
        except (TemplateError, JinjaError) as e:
            flag = "eos_not_trained" if self._eos_missing(ex) else "template_inconsistent"
            return [(flag, one_line(e))]
        return self._length_hits(ex, kept=r.n_trained) if r.truncated else []

    def _length_hits(self, ex: Example, kept: int) -> list[Hit]:
        """prompt_too_long or response_truncated for a row longer than max_length (`kept` trained tokens left)."""
        full, limit = self.unbounded.render(ex), self.renderer.config.max_length
        outcome = self._outcome(kept)
        n_prompt = self._n_tokens(self.renderer.example_prompt_text(ex))
        if n_prompt >= limit:
            return [("prompt_too_long", f"prompt is {n_prompt} tokens >= max_length {limit}; {outcome}")]
        lost = full.n_trained - kept
        if lost <= 0:
            return []  # truncate-prompt cut the prompt only: the policy working as meant
        detail = f"{lost} of {full.n_trained} trained tokens lost ({len(full)} tokens > max_length {limit}); {outcome}"
        return [("response_truncated", detail)]

    def _outcome(self, kept: int) -> str:
        """What training does with a row longer than max_length."""
        policy = self.renderer.config.truncation
        if policy != "truncate-prompt":
            return OUTCOME[policy]
        return OUTCOME[policy] if kept else "no response fits: the row is dropped (truncation: truncate-prompt)"

    def _n_tokens(self, text: str) -> int:
        return len(self.renderer.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _eos_missing(self, ex: Example) -> bool:
        """Whether a trained span of the (prefix-consistent) render lacks a final EOS/end-of-turn token."""
        try:
            text, spans = self.renderer.render_text(ex)
        except (TemplateError, JinjaError):
            return False
        return any(not text[a:b].endswith(self.end_strings) for a, b in spans)

    def _duplicate(self, row_id: str, line: int, prompt: Callable[[], str]) -> FlaggedRow | None:
        try:
            text = prompt()
        except (InstillmError, JinjaError):
            return None  # the template already failed on this row
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        first_id, first_line = self.prompts.setdefault(key, (row_id, line))
        if first_line == line:
            return None
        detail = f"same rendered prompt as {first_id!r} (line {first_line})"
        return FlaggedRow(row_id, line, detail, first_id=first_id, first_line=first_line)


def audit_examples(examples: Iterable[Example], renderer: Renderer) -> AuditReport:
    """Audit examples in order; a row's `line` is its 1-based position."""
    auditor = Auditor(renderer)
    for i, ex in enumerate(examples, 1):
        auditor.add(ex, i)
    return auditor.report


def audit_file(path: str | Path, renderer: Renderer, progress: Callable[[], None] | None = None) -> AuditReport:
    """Audit a canonical JSONL file (rows as `read_audit_rows` reads them); DataError when it holds no row."""
    auditor = Auditor(renderer)
    for line, record, ex in read_audit_rows(path):
        if ex is None:
            _add_untrainable(auditor, line, record)
        else:
            auditor.add(ex, line)
        if progress is not None:
            progress()
    if auditor.report.n_examples == 0:
        raise DataError(f"no examples to audit: {path} holds no rows")
    return auditor.report


def read_audit_rows(path: str | Path) -> Iterator[tuple[int, Any, Example | None]]:
    """(line, record, Example) per row of a canonical JSONL file; the Example is None for a row whose only fault
    is that every assistant turn has `train: false`. Any other bad row raises DataError naming file:line, as
    `read_examples` does."""
    for row in read_rows(path):
        if row.error is not None:
            raise DataError(f"{path}:{row.line}: {row.error}")
        try:
            ex: Example | None = Example.from_dict(row.record)
        except RowError as e:
            if e.reason != "nothing_to_train":
                raise DataError(f"{path}:{row.line}: {e}") from e
            ex = None
        yield row.line, row.record, ex


def _add_untrainable(auditor: Auditor, line: int, record: Any) -> None:
    """Flag a row the schema rejects because no assistant turn is trained."""
    messages = parse_messages(record["messages"])
    row_id = record.get("id") or content_id(messages)  # the schema has checked that an id is a string
    detail = "every assistant turn has train=false (the schema rejects this row: training stops on it)"
    auditor.add_untrainable(row_id, line, messages, detail)


def parse_fail_on(specs: Iterable[str]) -> dict[str, float]:
    """`FLAG=RATE` strings → {flag: rate}; ConfigError naming the bad spec."""
    limits: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not sep or name not in FLAGS:
            raise ConfigError(f"--fail-on {spec!r}: expected FLAG=RATE with FLAG one of {', '.join(FLAGS)}")
        limits[name] = parse_rate(value, f"--fail-on {name}")
    return limits


def parse_rate(value: str | float, what: str) -> float:
    """A rate in [0, 1]; ConfigError otherwise."""
    try:
        rate = float(value)
    except ValueError:
        rate = float("nan")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{what}: expected a rate between 0 and 1, got {value!r}")
    return rate
