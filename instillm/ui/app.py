"""The Gradio app: the Data, Runs and Chat tabs wired to `data_tab`, `runs_tab` and `chat_tab`, and `launch`.

Only wiring lives here: components, events and the conversion of library values into what Gradio
shows (DataFrames, dropdown updates). Every handler is a plain module-level function; errors of the
library (`InstillmError`) become Gradio errors, shown as a message in the page.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instillm.config import Config, check_min_int

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from instillm.data.render import TRUNCATION_POLICIES, RenderConfig, Renderer  # noqa: E402
from instillm.errors import ConfigError, InstillmError  # noqa: E402
from instillm.ui import chat_tab, data_tab, runs_tab  # noqa: E402

TEMPLATES = ["auto", "tokenizer", "chatml", "alpaca", "plain"]
REFRESH_S = 2.0  # how often the Runs tab re-reads metrics.jsonl while "live" is on


@dataclass(frozen=True)
class UIOptions(Config):
    """What `instillm ui` was started with: the files and folders to offer, the default model and settings."""

    paths: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # the first: the data tab's tokenizer and the left chat model; the second: right
    template: str = "auto"
    max_length: int = 2048
    device: str = "auto"
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="instillm-ui-"))

    @staticmethod
    def check(v: Mapping[str, Any]) -> list[str]:
        problems: list[str] = []
        check_min_int(problems, "max_length", v["max_length"], 2)
        missing = [p for p in v["paths"] if not Path(p).exists()]
        if missing:
            problems.append(f"paths: no such file or folder: {', '.join(missing)}")
        return problems

    @property
    def runs(self) -> list[str]:
        """The run folders among `paths`."""
        return [p for p in self.paths if runs_tab.is_run_dir(p)]

    @property
    def data_files(self) -> list[str]:
        """The files among `paths` (data to open)."""
        return [p for p in self.paths if Path(p).is_file()]

    def model(self, i: int) -> str:
        """The i-th model given (the first one when fewer were given), "" when none."""
        return self.models[min(i, len(self.models) - 1)] if self.models else ""


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show a library error as a Gradio error message instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InstillmError as e:
            raise gr.Error(str(e)) from e

    return wrapper


def frame(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> pd.DataFrame:
    """A table for a gr.Dataframe."""
    return pd.DataFrame([list(r) for r in rows], columns=list(headers))


def choices(values: Sequence[str], value: str | None = None) -> Any:
    """A dropdown update: new choices, the first selected unless `value` is one of them."""
    return gr.update(choices=list(values), value=value if value in values else (values[0] if values else None))


# ------------------------------------------------------------------------------ data tab: handlers


@functools.lru_cache(maxsize=8)
def tokenizer_for(model: str) -> Any:
    """The tokenizer of `model`, loaded once."""
    from instillm.models.loading import load_tokenizer

    return load_tokenizer(model)


def open_session(
    path: str, model: str, template: str, max_length: float, truncation: str, workdir: str | Path
) -> data_tab.DataSession:
    """Open `path` with the tokenizer of `model` and the given render settings."""
    if not (path or "").strip():
        raise ConfigError("choose a data file first")
    if not (model or "").strip():
        raise ConfigError("give a model (its tokenizer renders the rows), e.g. a run's final/ folder")
    config = RenderConfig(template=template, max_length=int(max_length), truncation=truncation)
    return data_tab.open_data(path.strip(), Renderer(tokenizer_for(model.strip()), config), workdir)


def row_filter(
    task: str, category: str, source: str, flag: str, min_len: Any, max_len: Any, text: str, review: str
) -> data_tab.RowFilter:
    """A RowFilter from the filter widgets (a blank bound: none)."""
    return data_tab.RowFilter(
        task, category, source, flag, bound(min_len), bound(max_len), text or "", review or data_tab.ANY
    )


def bound(value: Any) -> int | None:
    """A token bound typed in a text box: None when blank; ConfigError when not a whole number."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"a token bound must be a whole number, got {text!r}") from None


def rows_view(
    session: data_tab.DataSession | None,
    decisions: data_tab.Decisions,
    flt: data_tab.RowFilter,
    page: float,
    size: float,
) -> tuple[pd.DataFrame, str, int]:
    """(table of one page of filtered rows, "rows a-b of n" line, the page shown)."""
    if session is None:
        return frame([], data_tab.ROW_HEADERS), "open a data file first", 1
    rows = data_tab.filter_rows(session.rows, flt, decisions)
    shown, page_no, n_pages = data_tab.page_of(rows, int(page or 1), int(size or 25))
    info = f"{len(rows)} of {len(session.rows)} rows match · page {page_no} of {n_pages}"
    return frame(data_tab.table_rows(shown, decisions), data_tab.ROW_HEADERS), info, page_no


@friendly
def show_row(session: data_tab.DataSession | None, decisions: data_tab.Decisions, line: Any) -> tuple[str, str]:
    """(the row rendered as training renders it, its response for the review editor)."""
    if session is None:
        raise ConfigError("open a data file first")
    if line in (None, ""):
        return "", ""
    return data_tab.row_html(session, int(line)), data_tab.response_of(session, int(line), decisions)


def selected_line(evt: gr.SelectData) -> int:
    """The line (first column) of the table row that was clicked."""
    return int(evt.row_value[0])


def flagged_line(evt: gr.SelectData) -> int:
    """The line (second column) of the flagged row that was clicked."""
    return int(evt.row_value[1])


# ------------------------------------------------------------------------------ data tab: layout


class DataTab:
    """The Data tab's components and events."""

    def __init__(self, opts: UIOptions) -> None:
        """Lay the tab out and wire it."""
        self.opts = opts
        self.session = gr.State(None)
        self.decisions = gr.State({})
        self._open_bar()
        with gr.Tabs():
            with gr.Tab("Rows", id="data-rows"):
                self._rows()
            with gr.Tab("Audit", id="data-audit"):
                self._audit()
            with gr.Tab("Rejects", id="data-rejects"):
                self._rejects()
            with gr.Tab("Review", id="data-review"):
                self._review()
            with gr.Tab("Card", id="data-card"):
                self._card()
        self._wire()

    def _open_bar(self) -> None:
        files = self.opts.data_files
        with gr.Row():
            self.path = gr.Dropdown(
                files, value=files[0] if files else None, allow_custom_value=True, label="data file"
            )
            self.model = gr.Textbox(self.opts.model(0), label="model or tokenizer (path or hub id)")
            self.template = gr.Dropdown(TEMPLATES, value=self.opts.template, allow_custom_value=True, label="template")
            self.max_length = gr.Number(self.opts.max_length, precision=0, label="max_length")
            self.truncation = gr.Dropdown(list(TRUNCATION_POLICIES), value="drop", label="truncation")
        self.open_btn = gr.Button("Open", variant="primary", elem_id="data-open")
        self.summary = gr.Markdown("Open canonical JSONL, or any file the importer reads.", elem_id="data-summary")

    def _rows(self) -> None:
        with gr.Row():
            self.task = gr.Dropdown([data_tab.ANY], value=data_tab.ANY, label="task")
            self.category = gr.Dropdown([data_tab.ANY], value=data_tab.ANY, label="category")
            self.source = gr.Dropdown([data_tab.ANY], value=data_tab.ANY, label="source")
            self.flag = gr.Dropdown(data_tab.flag_choices(), value=data_tab.ANY, label="audit flag")
            self.review_filter = gr.Dropdown(
                [data_tab.ANY, data_tab.NONE, *data_tab.DECISIONS], value=data_tab.ANY, label="review"
            )
        with gr.Row():
            self.min_len = gr.Textbox(label="min tokens (blank: no bound)")
            self.max_len = gr.Textbox(label="max tokens (blank: no bound)")
            self.text = gr.Textbox(label="search text")
            self.page = gr.Number(1, precision=0, label="page")
            self.page_size = gr.Number(25, precision=0, label="rows per page")
        self.page_info = gr.Markdown()
        self.table = gr.Dataframe(headers=data_tab.ROW_HEADERS, interactive=False, elem_id="data-table")
        with gr.Row():
            self.line = gr.Number(1, precision=0, minimum=1, label="row (line) to show")
            self.show_btn = gr.Button("Show row")
        gr.Markdown("Trained tokens are highlighted; hover a token for its id.")
        self.view = gr.HTML(elem_id="row-view")

    def _audit(self) -> None:
        self.audit_counts = gr.Dataframe(headers=data_tab.AUDIT_HEADERS, interactive=False, elem_id="audit-counts")
        self.audit_flag = gr.Dropdown([data_tab.ANY, *data_tab.FLAGS], value=data_tab.ANY, label="flag")
        self.flagged = gr.Dataframe(headers=data_tab.FLAGGED_HEADERS, interactive=False, elem_id="audit-flagged")
        gr.Markdown("Click a flagged row to see it as training renders it.")
        self.audit_view = gr.HTML(elem_id="audit-view")

    def _rejects(self) -> None:
        self.reasons = gr.Dataframe(headers=["reason", "rows"], interactive=False, elem_id="reject-reasons")
        self.reason = gr.Dropdown([data_tab.ANY], value=data_tab.ANY, label="reason")
        self.rejects = gr.Dataframe(headers=data_tab.REJECT_HEADERS, interactive=False, elem_id="rejects-table")

    def _review(self) -> None:
        gr.Markdown("Decide on the row shown in Rows (or a whole filter); save writes the curated file.")
        with gr.Row():
            self.keep_btn = gr.Button("Keep row")
            self.drop_btn = gr.Button("Drop row")
            self.clear_btn = gr.Button("Clear row")
        self.response = gr.Textbox(lines=4, label="response (final assistant turn) of the row shown")
        self.edit_btn = gr.Button("Save edit")
        with gr.Row():
            self.bulk = gr.Dropdown(["keep", "drop", "clear"], value="keep", label="decision for every filtered row")
            self.bulk_btn = gr.Button("Apply to the rows matching the Rows filter")
        self.review_counts = gr.Markdown(elem_id="review-counts")
        with gr.Row():
            self.output = gr.Textbox(label="curated file to write (.jsonl)")
            self.unreviewed = gr.Checkbox(True, label="keep rows not reviewed")
        self.save_btn = gr.Button("Save curated file", variant="primary")
        self.save_status = gr.Markdown(elem_id="review-status")

    def _card(self) -> None:
        gr.Markdown(
            "Eval overlap is measured against the held-out splits of the run opened in the Runs tab and the eval "
            "files named here; text that many training rows share (a template) is not counted."
        )
        self.card_evals = gr.Textbox(label="eval files (optional; one a line or comma-separated)", elem_id="card-evals")
        self.card_btn = gr.Button("Build the data card")
        self.card = gr.HTML(elem_id="data-card-view")

    # -- events -------------------------------------------------------------------------
    def _filters(self) -> list[Any]:
        return [self.task, self.category, self.source, self.flag, self.min_len, self.max_len, self.text]

    def _wire(self) -> None:
        opened = [self.session, self.decisions, self.summary, self.task, self.category, self.source]
        opened += [self.audit_counts, self.audit_flag, self.flagged, self.reasons, self.reason, self.rejects]
        opened += [self.review_counts, self.view, self.audit_view]
        settings = [self.path, self.model, self.template, self.max_length, self.truncation]
        table = [self.table, self.page_info, self.page]
        self.open_btn.click(self.opened, settings, opened, api_name="open_data").then(
            self.refresh, self._table_inputs(), table, api_name="rows"
        )
        choosers: list[Any] = [self.task, self.category, self.source, self.flag, self.review_filter]
        for widget in choosers:
            widget.input(self.refresh, self._table_inputs(), table, api_visibility="private")
        typed: list[Any] = [self.min_len, self.max_len, self.text, self.page, self.page_size]
        for widget in typed:
            widget.submit(self.refresh, self._table_inputs(), table, api_visibility="private")
        row = [self.session, self.decisions, self.line]
        self.table.select(selected_line, None, self.line, api_visibility="private").then(
            show_row, row, [self.view, self.response], api_visibility="private"
        )
        self.show_btn.click(show_row, row, [self.view, self.response], api_name="row")
        self._wire_audit()
        self._wire_review()

    def wire_card(self, run_path: Any) -> None:
        """The card button: eval overlap against the run `run_path` holds (the Runs tab's) and the files named."""
        inputs = [self.session, run_path, self.card_evals]
        self.card_btn.click(friendly(self.card_page), inputs, self.card, api_name="card")

    def _table_inputs(self) -> list[Any]:
        return [self.session, self.decisions, *self._filters(), self.review_filter, self.page, self.page_size]

    def _wire_audit(self) -> None:
        self.audit_flag.input(
            self.flagged_table, [self.session, self.audit_flag], self.flagged, api_visibility="private"
        )
        self.flagged.select(flagged_line, None, self.line, api_visibility="private").then(
            show_row,
            [self.session, self.decisions, self.line],
            [self.audit_view, self.response],
            api_visibility="private",
        )
        self.reason.input(self.rejects_table, [self.session, self.reason], self.rejects, api_visibility="private")

    def _wire_review(self) -> None:
        marks = [(self.keep_btn, "keep"), (self.drop_btn, "drop"), (self.clear_btn, "clear")]
        outputs = [self.decisions, self.review_counts, self.table, self.page_info, self.page]
        for btn, decision in marks:
            btn.click(
                friendly(functools.partial(self.mark_row, decision=decision)),
                [self.session, self.decisions, self.line, *self._table_inputs()[2:]],
                outputs,
                api_name=f"{decision}_row",
            )
        self.edit_btn.click(
            friendly(self.edit_row),
            [self.session, self.decisions, self.line, self.response, *self._table_inputs()[2:]],
            outputs,
            api_name="edit_row",
        )
        self.bulk_btn.click(
            friendly(self.mark_filtered),
            [self.session, self.decisions, self.bulk, *self._table_inputs()[2:]],
            outputs,
            api_name="mark_filtered",
        )
        self.save_btn.click(
            friendly(self.save),
            [self.session, self.decisions, self.output, self.unreviewed],
            self.save_status,
            api_name="save_review",
        )

    # -- handlers -------------------------------------------------------------------------
    @friendly
    def opened(self, path: str, model: str, template: str, max_length: float, truncation: str) -> tuple[Any, ...]:
        """Open a file: the session, fresh decisions, the summary, the facets, the audit and the rejects."""
        s = open_session(path, model, template, max_length, truncation, self.opts.workdir)
        fc = data_tab.facets(s.rows)
        reasons = data_tab.reject_reasons(s.rejects)
        return (
            s,
            {},
            data_tab.summary_text(s),
            *(choices(fc[k], data_tab.ANY) for k in ("task", "category", "source")),
            frame(data_tab.audit_counts(s.report), data_tab.AUDIT_HEADERS),
            data_tab.ANY,
            frame(data_tab.flagged_rows(s.report), data_tab.FLAGGED_HEADERS),
            frame(reasons, ["reason", "rows"]),
            choices([data_tab.ANY, *(r[0] for r in reasons)], data_tab.ANY),
            frame(data_tab.reject_rows(s.rejects), data_tab.REJECT_HEADERS),
            data_tab.review_counts({}, len(s.rows)),
            "",
            "",
        )

    @staticmethod
    @friendly
    def refresh(session: Any, decisions: data_tab.Decisions, *widgets: Any) -> tuple[pd.DataFrame, str, int]:
        """The rows table for the filter widgets, page and page size."""
        return rows_view(session, decisions, row_filter(*widgets[:-2]), widgets[-2], widgets[-1])

    @staticmethod
    def flagged_table(session: Any, flag: str) -> pd.DataFrame:
        """The flagged rows of one flag (or all)."""
        rows = data_tab.flagged_rows(session.report, flag) if session is not None else []
        return frame(rows, data_tab.FLAGGED_HEADERS)

    @staticmethod
    def rejects_table(session: Any, reason: str) -> pd.DataFrame:
        """The rejects of one reason (or all)."""
        return frame(data_tab.reject_rows(session.rejects if session else [], reason), data_tab.REJECT_HEADERS)

    def _after_review(self, session: Any, decisions: data_tab.Decisions, widgets: Sequence[Any]) -> tuple[Any, ...]:
        counts = data_tab.review_counts(decisions, len(session.rows))
        return (decisions, counts, *self.refresh(session, decisions, *widgets))

    def mark_row(self, session: Any, decisions: data_tab.Decisions, line: Any, *widgets: Any, decision: str) -> Any:
        """Mark the row shown keep, drop or clear it."""
        if session is None or line in (None, ""):
            raise gr.Error("open a data file and show a row first")
        session.row(int(line))
        return self._after_review(session, data_tab.decide(decisions, [int(line)], decision), widgets)

    def edit_row(self, session: Any, decisions: data_tab.Decisions, line: Any, response: str, *widgets: Any) -> Any:
        """Replace the response of the row shown (decision: edit)."""
        if session is None or line in (None, ""):
            raise gr.Error("open a data file and show a row first")
        return self._after_review(session, data_tab.edit(decisions, session, int(line), response), widgets)

    def mark_filtered(self, session: Any, decisions: data_tab.Decisions, decision: str, *widgets: Any) -> Any:
        """Mark every row matching the Rows filter."""
        if session is None:
            raise gr.Error("open a data file first")
        lines = [r.line for r in data_tab.filter_rows(session.rows, row_filter(*widgets[:-2]), decisions)]
        return self._after_review(session, data_tab.decide(decisions, lines, decision), widgets)

    @staticmethod
    def save(session: Any, decisions: data_tab.Decisions, output: str, include_unreviewed: bool) -> str:
        """Write the curated file; a line saying what was written where."""
        if session is None or not (output or "").strip():
            raise ConfigError("open a data file and name the curated file to write")
        saved = data_tab.save_review(session, decisions, output.strip(), include_unreviewed)
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(saved.counts.items()))
        return f"wrote `{saved.output}` ({counts}); dropped rows in `{saved.dropped_path}`"

    @staticmethod
    def card_page(session: Any, run_path: str | None, eval_files: str) -> str:
        """The data card of the opened file, eval overlap against the open run's eval splits and the files named."""
        if session is None:
            raise ConfigError("open a data file first")
        sets = runs_tab.eval_sets(runs_tab.find_run(run_path)) if run_path else {}
        return data_tab.card_page(session, data_tab.eval_file_list(eval_files), sets)


# ------------------------------------------------------------------------------ runs tab


def plot_frame(metrics: Sequence[dict[str, Any]], curve: str) -> pd.DataFrame:
    """Long-form points of one curve (CURVES) for a gr.LinePlot."""
    return pd.DataFrame(runs_tab.curve_points(metrics, runs_tab.CURVES[curve]), columns=["step", "value", "metric"])


def run_curves(path: str) -> tuple[Any, ...]:
    """(progress line, loss, lr and tokens/s plots, plan) of the run at `path`."""
    files = runs_tab.find_run(path)
    metrics = runs_tab.read_metrics(files)
    plots = tuple(plot_frame(metrics, c) for c in runs_tab.CURVES)
    return (runs_tab.progress_text(metrics, files), *plots, runs_tab.plan_text(files))


def run_tables(path: str) -> tuple[pd.DataFrame, ...]:
    """The before/after tables of the run at `path`: splits, categories, tasks, suites."""
    results = runs_tab.load_results(runs_tab.find_run(path))
    return (
        frame(runs_tab.split_rows(results), runs_tab.SPLIT_HEADERS),
        frame(runs_tab.group_rows(results, "per_category"), runs_tab.GROUP_HEADERS),
        frame(runs_tab.group_rows(results, "per_task"), runs_tab.GROUP_HEADERS),
        frame(runs_tab.suite_rows(results), runs_tab.SUITE_HEADERS),
    )


@friendly
def open_run(path: str) -> tuple[Any, ...]:
    """Everything the Runs tab shows of the run at `path` (which it keeps for the timer and the failures)."""
    if not (path or "").strip():
        raise ConfigError("choose a run folder first")
    files = runs_tab.find_run(path.strip())
    return (path.strip(), runs_tab.config_text(files), *run_curves(path.strip()), *run_tables(path.strip()))


def tick(path: str | None, live: bool, stamp: Any) -> tuple[Any, ...]:
    """On the timer: re-read the curves (and the tables) when metrics.jsonl changed since the last read."""
    if not path or not live or not runs_tab.is_run_dir(path):
        return (gr.skip(),) * 10
    now = list(runs_tab.metrics_stamp(runs_tab.find_run(path)))
    if now == stamp:
        return (gr.skip(),) * 10
    return (now, *run_curves(path), *run_tables(path))


@friendly
def failure_view(path: str | None, stage: str, split: str, task: str) -> tuple[Any, ...]:
    """(failure table, split choices, task choices) of the run at `path`, worst tasks first."""
    if not path:
        raise ConfigError("open a run first")
    found = runs_tab.failures(runs_tab.load_results(runs_tab.find_run(path)), stage)
    shown = runs_tab.select_failures(found, task, split)
    table = frame(runs_tab.failure_rows(shown), runs_tab.FAILURE_HEADERS)
    return table, choices(runs_tab.failure_splits(found), split), choices(runs_tab.failure_tasks(found), task)


@friendly
def export_run_failures(path: str | None, stage: str, split: str, task: str, output: str) -> str:
    """Write the failures shown as canonical JSONL; a line saying how many went where."""
    if not path or not (output or "").strip():
        raise ConfigError("open a run and name the JSONL file to write")
    files = runs_tab.find_run(path)
    found = runs_tab.select_failures(runs_tab.failures(runs_tab.load_results(files), stage), task, split)
    out, n = runs_tab.export_failures(files, found, output.strip())
    return f"wrote {n} failure(s) to `{out}` (canonical JSONL: prompt → expected answer, the wrong answer in meta)"


class RunsTab:
    """The Runs tab's components and events."""

    def __init__(self, opts: UIOptions) -> None:
        """Lay the tab out and wire it."""
        runs = opts.runs
        self.path = gr.State(None)
        self.stamp = gr.State(None)
        with gr.Row():
            self.run = gr.Dropdown(runs, value=runs[0] if runs else None, allow_custom_value=True, label="run folder")
            self.live = gr.Checkbox(True, label=f"live (re-read metrics.jsonl every {REFRESH_S:g} s)")
        self.open_btn = gr.Button("Open run", variant="primary", elem_id="run-open")
        self.progress = gr.Markdown(elem_id="run-progress")
        self._curves()
        self._tables()
        self._failures()
        self._wire()

    def _curves(self) -> None:
        with gr.Row():
            self.loss = gr.LinePlot(x="step", y="value", color="metric", title="loss", elem_id="loss-plot")
            self.lr = gr.LinePlot(x="step", y="value", color="metric", title="learning rate", elem_id="lr-plot")
            self.tps = gr.LinePlot(x="step", y="value", color="metric", title="tokens/s", elem_id="tps-plot")
        with gr.Row():
            self.config = gr.Code(language="yaml", label="config", elem_id="run-config")
            self.plan = gr.Code(language="yaml", label="resolved plan", elem_id="run-plan")

    def _tables(self) -> None:
        self.splits = gr.Dataframe(headers=runs_tab.SPLIT_HEADERS, interactive=False, label="exact match per split")
        with gr.Row():
            self.categories = gr.Dataframe(headers=runs_tab.GROUP_HEADERS, interactive=False, label="per category")
            self.tasks = gr.Dataframe(headers=runs_tab.GROUP_HEADERS, interactive=False, label="per task")
        self.suites = gr.Dataframe(headers=runs_tab.SUITE_HEADERS, interactive=False, label="suites")

    def _failures(self) -> None:
        gr.Markdown("### Failures (results.json keeps up to 5 samples per task, failures first)")
        with gr.Row():
            self.stage = gr.Radio(["after", "before"], value="after", label="evaluation")
            self.split = gr.Dropdown([runs_tab.ANY], value=runs_tab.ANY, label="split")
            self.task = gr.Dropdown([runs_tab.ANY], value=runs_tab.ANY, label="task (worst first)")
        self.failure_table = gr.Dataframe(
            headers=runs_tab.FAILURE_HEADERS, interactive=False, wrap=True, elem_id="failures"
        )
        with gr.Row():
            self.export_path = gr.Textbox(label="export the failures shown to (.jsonl)")
            self.export_btn = gr.Button("Export failures")
        self.export_status = gr.Markdown(elem_id="export-status")

    def _wire(self) -> None:
        curves = [self.progress, self.loss, self.lr, self.tps, self.plan]
        tables = [self.splits, self.categories, self.tasks, self.suites]
        failure_in = [self.path, self.stage, self.split, self.task]
        failure_out = [self.failure_table, self.split, self.task]
        self.open_btn.click(open_run, self.run, [self.path, self.config, *curves, *tables], api_name="open_run").then(
            failure_view, failure_in, failure_out, api_name="failures"
        )
        for widget in (self.stage, self.split, self.task):
            widget.input(failure_view, failure_in, failure_out, api_visibility="private")
        self.export_btn.click(
            export_run_failures, [*failure_in, self.export_path], self.export_status, api_name="export_failures"
        )
        timer = gr.Timer(REFRESH_S)
        timer.tick(tick, [self.path, self.live, self.stamp], [self.stamp, *curves, *tables], api_visibility="private")


# ------------------------------------------------------------------------------ chat tab


def chat_settings(max_new_tokens: float, temperature: float, top_p: float, seed: float, template: str) -> Any:
    """ChatSettings from the widgets."""
    return chat_tab.ChatSettings(int(max_new_tokens), float(temperature), float(top_p), int(seed), template or "auto")


def describe_settings(*widgets: Any) -> str:
    """The settings line shown above the answers."""
    return f"**settings**: {chat_settings(*widgets).describe()}"


class ChatTab:
    """The Chat tab's components and events."""

    def __init__(self, opts: UIOptions) -> None:
        """Lay the tab out and wire it."""
        self.pool = chat_tab.ModelPool(opts.device)
        with gr.Row():
            self.sides = [self._side("A", opts.model(0)), self._side("B", opts.model(1))]
        self.system = gr.Textbox(label="system prompt (optional)")
        self.prompt = gr.Textbox(lines=3, label="prompt", elem_id="chat-prompt")
        self._settings()
        self.send = gr.Button("Send to both", variant="primary", elem_id="chat-send")
        with gr.Row():
            self.answers = [gr.Textbox(lines=8, label=f"answer {s}", elem_id=f"chat-{s.lower()}") for s in "AB"]
        with gr.Accordion("prompts as each side renders them", open=False), gr.Row():
            self.previews = [gr.Code(label=f"prompt {s}") for s in "AB"]
        self._wire()

    def _side(self, name: str, model: str) -> list[Any]:
        with gr.Column():
            gr.Markdown(f"**{name}**")
            kind = gr.Radio(list(chat_tab.KINDS), value="local", label="kind")
            path = gr.Textbox(model, label="model path / hub id (local) or served model name (endpoint)")
            url = gr.Textbox(label="endpoint base URL (e.g. http://127.0.0.1:8000/v1)")
            key = gr.Textbox(type="password", label="endpoint API key (optional)")
        return [kind, path, url, key]

    def _settings(self) -> None:
        with gr.Row():
            self.max_new = gr.Number(128, precision=0, minimum=1, label="max_new_tokens")
            self.temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)")
            self.top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top_p")
            self.seed = gr.Number(0, precision=0, label="seed")
            self.template = gr.Dropdown(TEMPLATES, value="auto", allow_custom_value=True, label="template")
        self.settings_line = gr.Markdown(describe_settings(128, 0.0, 1.0, 0, "auto"), elem_id="chat-settings")

    def _wire(self) -> None:
        settings: list[Any] = [self.max_new, self.temperature, self.top_p, self.seed, self.template]
        for widget in settings:
            widget.change(describe_settings, settings, self.settings_line, api_visibility="private")
        inputs = [*self.sides[0], *self.sides[1], self.system, self.prompt, *settings]
        self.send.click(self.answer, inputs, [*self.answers, *self.previews], api_name="chat")

    def answer(self, *values: Any) -> Iterator[tuple[str, ...]]:
        """Stream both answers side by side: (answer A, answer B, prompt A, prompt B) as they grow."""
        a, b = chat_tab.Target(*values[0:4]), chat_tab.Target(*values[4:8])
        system, prompt, settings = values[8], values[9], chat_settings(*values[10:])
        try:
            messages = chat_tab.messages_for(prompt or "", system or "")
        except InstillmError as e:
            raise gr.Error(str(e)) from e
        shown = [self._preview(t, messages, settings) for t in (a, b)]
        streams = [functools.partial(chat_tab.answer_stream, t, self.pool, messages, settings) for t in (a, b)]
        for texts in chat_tab.side_by_side(streams):
            yield (*texts, *shown)

    def _preview(self, target: Any, messages: chat_tab.Messages, settings: Any) -> str:
        try:
            return chat_tab.preview(target, self.pool, messages, settings)
        except InstillmError as e:
            return f"error: {e}"


# ------------------------------------------------------------------------------ the app


def build_app(opts: UIOptions) -> gr.Blocks:
    """The Blocks of the whole UI."""
    with gr.Blocks(title="instillm", analytics_enabled=False) as demo:
        gr.Markdown("## instillm — data, runs and chat")
        with gr.Tabs():
            with gr.Tab("Data", id="data"):
                data = DataTab(opts)
            with gr.Tab("Runs", id="runs"):
                runs = RunsTab(opts)
            data.wire_card(runs.path)
            with gr.Tab("Chat", id="chat"):
                ChatTab(opts)
    return demo


def is_loopback(host: str) -> bool:
    """Whether `host` only listens on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[] ")).is_loopback
    except ValueError:
        return False


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`user:pass` → (user, pass); None for no value; ConfigError for a value without both parts."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth: expected USER:PASSWORD")
    return user, password


def bind_warning(host: str, auth: tuple[str, str] | None) -> str | None:
    """The warning to print when the UI would listen beyond this machine without a password."""
    if auth is not None or is_loopback(host):
        return None
    return (
        f"warning: binding {host} without --auth: anyone who can reach this port can read the files and "
        "folders offered and run the models; add --auth USER:PASSWORD"
    )


def launch(
    opts: UIOptions,
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    announce: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    block: bool = True,
) -> tuple[gr.Blocks, str]:
    """Start the UI on host:port (loopback by default); blocks until Ctrl-C unless `block` is False."""
    message = bind_warning(host, auth)
    if message:
        warn(message)
    demo = build_app(opts).queue()
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        show_error=True,
        css=data_tab.TOKEN_CSS,
    )
    announce(url)
    if block:
        demo.block_thread()
    return demo, url
