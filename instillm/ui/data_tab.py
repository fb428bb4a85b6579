"""The Data tab's logic: open a dataset, page and filter its rows, render a row as training renders it,
the mask audit, rejects by reason, a keep/drop/edit review saved with the decisions in `meta`, the card
(with near-duplicate clusters and eval overlap, as `instillm data card` and `instillm run`'s report build it).

A file that is not canonical JSONL is run through the importer (`instillm data import`) into the UI's
work folder first; its rejects are then browsable. Rows are rendered with the training `Renderer`
and audited with `instillm.data.audit` (the `instillm data audit` report), so what is shown is what
training sees.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jinja2 import TemplateError as JinjaError

from instillm.data.audit import FLAGS, UNBOUNDED, AuditReport, audit_file, read_audit_rows
from instillm.data.importer import ImportSummary, import_files, refuse_output_over_inputs, rejects_path_for
from instillm.data.io import one_line, read_rows, temp_beside
from instillm.data.render import IGNORE_INDEX, Rendered, Renderer
from instillm.data.schema import Example, line_safe
from instillm.errors import DataError, RenderError, RowError, TemplateError

ROW_HEADERS = ["line", "id", "task", "category", "source", "tokens", "trained", "flags", "review"]
AUDIT_HEADERS = ["flag", "rows", "rate"]
FLAGGED_HEADERS = ["flag", "line", "id", "detail"]
REJECT_HEADERS = ["file", "line", "reason", "detail", "raw"]
DECISIONS = ("keep", "drop", "edit")
ANY = "(any)"
NONE = "(none)"
REVIEW_REASON = "dropped_in_review"
TOKEN_CSS = """
.tokview { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.6; }
.tokview .tok { border-radius: 2px; }
.tokview .tok.m { color: #6b7280; }
.tokview .tok.t { background: #bbf7d0; color: #14532d; }
.tokview .tok:hover { outline: 1px solid #2563eb; }
.rowhead { font-size: 13px; margin-bottom: 6px; }
.rowhead .flag { background: #fee2e2; color: #991b1b; border-radius: 3px; padding: 0 4px; margin-right: 4px; }
"""


# ------------------------------------------------------------------------------ opening a dataset


@dataclass
class DataRow:
    """One row of the opened file: its record, the Example (None when nothing is trained), lengths, flags."""

    line: int
    record: dict[str, Any]
    example: Example | None
    length: int | None = None  # tokens as training renders it (the full length of a row too long to keep)
    trained: int | None = None  # tokens with loss (0: training drops the row)
    flags: list[str] = field(default_factory=list)

    def field(self, name: str) -> str:
        """A string field of the record (id, task, category, source), "" when absent."""
        value = self.record.get(name)
        return value if isinstance(value, str) else ""


@dataclass
class DataSession:
    """An opened dataset: where it came from, its rows, the renderer, the audit and the rejects."""

    path: Path
    canonical: Path
    rows: list[DataRow]
    renderer: Renderer
    report: AuditReport
    rejects: list[dict[str, Any]] = field(default_factory=list)
    imported: ImportSummary | None = None

    def row(self, line: int) -> DataRow:
        """The row at `line`; DataError when there is none."""
        for r in self.rows:
            if r.line == line:
                return r
        raise DataError(f"{self.canonical} has no row at line {line}")


def open_data(path: str | Path, renderer: Renderer, workdir: str | Path) -> DataSession:
    """Open canonical JSONL, or import any other file into `workdir`; render, audit and read rejects."""
    src = Path(path)
    canonical, summary = canonical_file(src, Path(workdir))
    rows = load_rows(canonical, renderer)
    report = audit_file(canonical, renderer)
    attach_flags(rows, report)
    rejects = read_rejects(rejects_path_for(canonical))
    return DataSession(src, canonical, rows, renderer, report, rejects, summary)


def canonical_file(path: Path, workdir: Path) -> tuple[Path, ImportSummary | None]:
    """`path` itself when it is canonical JSONL, else the importer's output in `workdir` (and its summary).

    Anything the importer reads may be given: a file of another format, a dataset folder, a hub id."""
    if is_canonical(path):
        return path, None
    workdir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(path.absolute()).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    summary = import_files([str(path)], workdir / f"{path.name.split('.')[0]}-{key}.imported.jsonl")
    return summary.output, summary


def is_canonical(path: Path) -> bool:
    """Whether every row of a .jsonl file parses as a canonical example (rows that train nothing count)."""
    if not path.name.endswith(".jsonl") or not path.is_file():
        return False
    try:
        for _ in read_audit_rows(path):
            pass
    except DataError:
        return False
    return True


def load_rows(path: Path, renderer: Renderer) -> list[DataRow]:
    """Every row of a canonical file with its rendered and trained token counts."""
    unbounded = Renderer(renderer.tokenizer, replace(renderer.config, max_length=UNBOUNDED))
    rows = []
    for line, record, ex in read_audit_rows(path):
        length, trained = render_counts(ex, renderer, unbounded) if ex is not None else (None, 0)
        rows.append(DataRow(line, record, ex, length, trained))
    return rows


def render_counts(ex: Example, renderer: Renderer, unbounded: Renderer) -> tuple[int | None, int | None]:
    """(tokens, trained tokens) as training renders `ex`; a row too long to keep: (its full length, 0)."""
    try:
        r = renderer.render(ex)
    except RenderError as e:
        return (len(unbounded.render(ex)), 0) if e.reason == "too_long" else (None, 0)
    except (TemplateError, JinjaError):
        return None, None
    return len(r), r.n_trained


def attach_flags(rows: Sequence[DataRow], report: AuditReport) -> None:
    """Give each row the audit flags raised on its line."""
    by_line = {r.line: r for r in rows}
    for flag, flagged in report.flags.items():
        for f in flagged:
            by_line[f.line].flags.append(flag)


# ------------------------------------------------------------------------------ filtering and paging


@dataclass(frozen=True)
class RowFilter:
    """What the rows table shows: facets (ANY = no constraint), a flag, a length range, a text search."""

    task: str = ANY
    category: str = ANY
    source: str = ANY
    flag: str = ANY  # ANY, NONE (no flag), "flagged" (any flag) or one flag name
    min_length: int | None = None
    max_length: int | None = None
    text: str = ""
    review: str = ANY  # ANY, NONE (not reviewed) or a decision

    def accepts(self, row: DataRow, decisions: dict[int, dict[str, Any]]) -> bool:
        """Whether `row` passes every constraint."""
        facets = ((self.task, "task"), (self.category, "category"), (self.source, "source"))
        if any(want != ANY and row.field(name) != want for want, name in facets):
            return False
        return self._flag_ok(row) and self._length_ok(row) and self._text_ok(row) and self._review_ok(row, decisions)

    def _flag_ok(self, row: DataRow) -> bool:
        if self.flag == ANY:
            return True
        if self.flag == NONE:
            return not row.flags
        return bool(row.flags) if self.flag == "flagged" else self.flag in row.flags

    def _length_ok(self, row: DataRow) -> bool:
        n = row.length
        if n is None:
            return self.min_length is None and self.max_length is None
        return (self.min_length is None or n >= self.min_length) and (self.max_length is None or n <= self.max_length)

    def _text_ok(self, row: DataRow) -> bool:
        needle = self.text.strip().lower()
        return not needle or needle in json.dumps(row.record, ensure_ascii=False).lower()

    def _review_ok(self, row: DataRow, decisions: dict[int, dict[str, Any]]) -> bool:
        if self.review == ANY:
            return True
        decision = decisions.get(row.line, {}).get("decision")
        return decision is None if self.review == NONE else decision == self.review


def filter_rows(
    rows: Iterable[DataRow], flt: RowFilter, decisions: dict[int, dict[str, Any]] | None = None
) -> list[DataRow]:
    """The rows `flt` accepts, in file order."""
    return [r for r in rows if flt.accepts(r, decisions or {})]


def page_of(items: Sequence[Any], page: int, size: int) -> tuple[list[Any], int, int]:
    """(items on 1-based `page`, the page actually shown (clamped), number of pages)."""
    size = max(1, int(size))
    n_pages = max(1, -(-len(items) // size))
    page = min(max(1, int(page)), n_pages)
    return list(items[(page - 1) * size : page * size]), page, n_pages


def table_rows(rows: Iterable[DataRow], decisions: dict[int, dict[str, Any]] | None = None) -> list[list[Any]]:
    """Rows for the rows table (ROW_HEADERS)."""
    decisions = decisions or {}
    return [
        [
            r.line,
            r.field("id"),
            r.field("task"),
            r.field("category"),
            r.field("source"),
            "" if r.length is None else r.length,
            "" if r.trained is None else r.trained,
            ", ".join(r.flags),
            decisions.get(r.line, {}).get("decision", ""),
        ]
        for r in rows
    ]


def facets(rows: Iterable[DataRow]) -> dict[str, list[str]]:
    """Choices of each filter facet: ANY first, then the values present (sorted)."""
    rows = list(rows)
    return {name: [ANY, *sorted({r.field(name) for r in rows})] for name in ("task", "category", "source")}


def flag_choices() -> list[str]:
    """Choices of the flag filter."""
    return [ANY, NONE, "flagged", *FLAGS]


def summary_text(session: DataSession) -> str:
    """One Markdown paragraph: what was opened, how, with which template, and the audit's headline."""
    s, rep = session.renderer.config, session.report
    head = f"**{session.path}**: {len(session.rows)} rows"
    if session.imported is not None:
        imp = session.imported
        head += f" (imported to `{session.canonical}`: {imp.rows_imported} imported, {imp.rows_rejected} rejected)"
    settings = f"template `{session.renderer.template_name}`, max_length {s.max_length}, truncation {s.truncation}"
    return f"{head}; {settings}; {rep.n_flagged} row(s) flagged by the audit ({rep.rate():.1%})."


# ------------------------------------------------------------------------------ one row, rendered


def token_pieces(ids: Sequence[int], labels: Sequence[int], tokenizer: Any) -> list[tuple[int, int, str]]:
    """(start, end, text) runs of tokens that decode to whole characters, never across a trained/masked edge."""
    pieces, a = [], 0
    while a < len(ids):
        b = a + 1
        text = tokenizer.decode(ids[a:b], skip_special_tokens=False)
        while text.endswith("\ufffd") and b < len(ids) and b - a < 4 and _same_mask(labels, a, b):
            b += 1
            text = tokenizer.decode(ids[a:b], skip_special_tokens=False)
        pieces.append((a, b, text))
        a = b
    return pieces


def _same_mask(labels: Sequence[int], a: int, b: int) -> bool:
    return (labels[a] == IGNORE_INDEX) == (labels[b] == IGNORE_INDEX)


def token_html(rendered: Rendered, tokenizer: Any) -> str:
    """The render as HTML: one span per token (class `t` trained, `m` masked), its id(s) in `title`."""
    spans = []
    for a, b, text in token_pieces(rendered.input_ids, rendered.labels, tokenizer):
        trained = rendered.labels[a] != IGNORE_INDEX
        ids = " ".join(str(i) for i in rendered.input_ids[a:b])
        title = f"token {a}{'' if b == a + 1 else f'-{b - 1}'} · id {ids} · {'trained' if trained else 'masked'}"
        spans.append(f'<span class="tok {"t" if trained else "m"}" title="{title}">{html.escape(text)}</span>')
    return f'<div class="tokview">{"".join(spans)}</div>'


def row_html(session: DataSession, line: int) -> str:
    """A row as training renders it (trained tokens highlighted, ids on hover), headed by its flags."""
    row = session.row(line)
    return _row_head(session, row) + _row_body(row, session.renderer)


def _row_head(session: DataSession, row: DataRow) -> str:
    hits = [(name, f) for name, rows in session.report.flags.items() for f in rows if f.line == row.line]
    flags = "".join(f'<span class="flag" title="{html.escape(f.detail)}">{name}</span>' for name, f in hits)
    n = "" if row.length is None else f" · {row.length} tokens, {row.trained} trained"
    what = f"line {row.line} · <b>{html.escape(row.field('id'))}</b> · task {html.escape(row.field('task')) or '—'}"
    notes = "".join(f"<li>{name}: {html.escape(f.detail)}</li>" for name, f in hits)
    return f'<div class="rowhead">{what}{n} {flags}<ul>{notes}</ul></div>'


def _row_body(row: DataRow, renderer: Renderer) -> str:
    if row.example is None:
        return _plain(row.record, "every assistant turn has train=false: no token is trained")
    try:
        r = renderer.render(row.example)
    except RenderError as e:
        return _too_long(row.example, renderer, e) if e.reason == "too_long" else _plain(row.record, str(e))
    except (TemplateError, JinjaError) as e:
        return _plain(row.record, f"the template fails on this row: {one_line(e)}")
    note = "<p><i>truncated to max_length (truncation: truncate-prompt)</i></p>" if r.truncated else ""
    return note + token_html(r, renderer.tokenizer)


def _too_long(ex: Example, renderer: Renderer, error: RenderError) -> str:
    """A row longer than max_length: its full render with every token masked, since training keeps none of it."""
    full = Renderer(renderer.tokenizer, replace(renderer.config, max_length=UNBOUNDED)).render(ex)
    masked = Rendered(full.input_ids, [IGNORE_INDEX] * len(full), ex.id, ex.task)
    note = f"<p><i>training drops this row ({html.escape(error.detail)}): no token of it is trained</i></p>"
    return note + token_html(masked, renderer.tokenizer)


def _plain(record: dict[str, Any], why: str) -> str:
    turns = record.get("messages")
    turns = turns if isinstance(turns, list) else []
    text = "\n".join(f"[{m.get('role')}] {m.get('content')}" for m in turns if isinstance(m, dict))
    return f'<p><i>{html.escape(why)}</i></p><div class="tokview">{html.escape(text)}</div>'


# ------------------------------------------------------------------------------ audit and rejects


def audit_counts(report: AuditReport) -> list[list[Any]]:
    """Rows for the audit summary (AUDIT_HEADERS): every flag with its count and rate."""
    return [[flag, n, round(report.rate(flag), 4)] for flag, n in report.counts.items()]


def flagged_rows(report: AuditReport, flag: str = ANY) -> list[list[Any]]:
    """Rows for the flagged-rows table (FLAGGED_HEADERS), of one flag or all."""
    return [[name, f.line, f.id, f.detail] for name, rows in report.flags.items() if flag in (ANY, name) for f in rows]


def read_rejects(path: Path) -> list[dict[str, Any]]:
    """The entries of a rejects file (file, line, reason, detail, raw); empty when there is none."""
    if not path.is_file():
        return []
    return [row.record for row in read_rows(path) if row.error is None and isinstance(row.record, dict)]


def reject_reasons(rejects: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """(reason, count) rows, most frequent first."""
    return [[reason, n] for reason, n in Counter(str(r.get("reason")) for r in rejects).most_common()]


def reject_rows(rejects: Iterable[dict[str, Any]], reason: str = ANY) -> list[list[Any]]:
    """Rows for the rejects table (REJECT_HEADERS), of one reason or all."""
    return [[r.get(k, "") for k in REJECT_HEADERS] for r in rejects if reason in (ANY, str(r.get("reason")))]


# ------------------------------------------------------------------------------ review


Decisions = dict[int, dict[str, Any]]


def decide(decisions: Decisions, lines: Iterable[int], decision: str) -> Decisions:
    """A copy of `decisions` with `lines` marked keep or drop ("clear" forgets them)."""
    if decision not in ("keep", "drop", "clear"):
        raise DataError(f"decision {decision!r}: expected keep, drop or clear")
    out = dict(decisions)
    for line in lines:
        if decision == "clear":
            out.pop(line, None)
        else:
            out[line] = {"decision": decision}
    return out


def edit(decisions: Decisions, session: DataSession, line: int, response: str) -> Decisions:
    """A copy of `decisions` with the final assistant turn of `line` replaced by `response` (validated)."""
    record = edited_record(session.row(line).record, response)
    try:
        Example.from_dict(record)
    except RowError as e:  # a DataError: the edit breaks the row (an empty response); an untrained row stays so
        if e.reason != "nothing_to_train":
            raise
    return {**decisions, line: {"decision": "edit", "response": response}}


def edited_record(record: dict[str, Any], response: str) -> dict[str, Any]:
    """`record` with its last turn's content replaced by `response`."""
    messages = [dict(m) for m in record["messages"]]
    messages[-1]["content"] = response
    return {**record, "messages": messages}


def response_of(session: DataSession, line: int, decisions: Decisions) -> str:
    """The final assistant turn of `line`: the edited text when it was edited."""
    decision = decisions.get(line, {})
    if decision.get("decision") == "edit":
        return str(decision["response"])
    turns = session.row(line).record.get("messages") or [{}]
    return str(turns[-1].get("content", ""))


def reviewed_record(row: DataRow, decision: dict[str, Any] | None, source: Path) -> dict[str, Any]:
    """The row as written by a review: the edit applied, the decision in `meta.review`."""
    review: dict[str, Any] = {
        "decision": (decision or {}).get("decision", "unreviewed"),
        "from": f"{source}:{row.line}",
    }
    record = row.record
    if review["decision"] == "edit":
        review["original"] = record["messages"][-1]["content"]
        record = edited_record(record, (decision or {})["response"])
    meta = record.get("meta")
    return {**record, "meta": {**(meta if isinstance(meta, dict) else {}), "review": review}}


@dataclass(frozen=True)
class ReviewSaved:
    """What `save_review` wrote: counts per decision, the curated file and the file of dropped rows."""

    output: Path
    dropped_path: Path
    counts: dict[str, int]


def save_review(
    session: DataSession, decisions: Decisions, output: str | Path, include_unreviewed: bool = True
) -> ReviewSaved:
    """Write kept, edited (and unreviewed) rows to `output` with `meta.review`; dropped ones to OUT.rejects.jsonl.

    Never writes over the opened file (or its imported copy); both files are replaced atomically."""
    out = Path(output)
    refuse_output_over_inputs({str(session.path), str(session.canonical)}, out)
    kept, dropped, counts = [], [], Counter[str]()
    for row in session.rows:
        record = reviewed_record(row, decisions.get(row.line), session.path)
        decision = record["meta"]["review"]["decision"]
        counts[decision] += 1
        if decision == "drop":
            dropped.append(_reject_entry(session, row, record))
        elif decision != "unreviewed" or include_unreviewed:
            kept.append(record)
    rejects = rejects_path_for(out)
    write_jsonl(out, kept)
    write_jsonl(rejects, dropped)
    return ReviewSaved(out, rejects, dict(counts))


def _reject_entry(session: DataSession, row: DataRow, record: dict[str, Any]) -> dict[str, Any]:
    """A dropped row in the rejects-file layout the importer uses."""
    raw = json.dumps(record, ensure_ascii=False)
    return {"file": str(session.path), "line": row.line, "reason": REVIEW_REASON, "detail": "", "raw": raw}


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write JSON lines atomically (a temp file beside `path`, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(line_safe(json.dumps(record, ensure_ascii=False)) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def review_counts(decisions: Decisions, n_rows: int) -> str:
    """One line: how many rows carry each decision and how many are not reviewed yet."""
    counts = Counter(d["decision"] for d in decisions.values())
    parts = [f"{k}: {counts.get(k, 0)}" for k in DECISIONS]
    return f"{', '.join(parts)}; not reviewed: {n_rows - sum(counts.values())}"


# ------------------------------------------------------------------------------ data card


def card_page(
    session: DataSession, eval_files: Sequence[str] = (), eval_sets: Mapping[str, Sequence[Example]] | None = None
) -> str:
    """The data card as `instillm data card` builds it, as an iframe: near-duplicate clusters, and eval overlap
    (template text left out) against `eval_sets` (a run's eval splits) and `eval_files` (any importable format);
    without either, the overlap section says no eval set was given."""
    from instillm.curate.card import card_with_checks
    from instillm.data.card import card_html, read_card_examples

    card = card_with_checks(read_card_examples(session.canonical), eval_files, eval_sets)
    page = card_html(card, title=f"Data card: {session.path.name}")
    return f'<iframe srcdoc="{html.escape(page)}" style="width:100%;height:900px;border:0"></iframe>'


def eval_file_list(text: str) -> list[str]:
    """The eval files typed in a text box (one a line, or separated by commas); DataError for one not found."""
    paths = [p.strip() for line in (text or "").splitlines() for p in line.split(",") if p.strip()]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise DataError(f"eval file(s) not found: {', '.join(missing)}")
    return paths
