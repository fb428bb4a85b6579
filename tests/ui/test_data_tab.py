"""The Data tab's functions: rows as training renders them, the audit, filters, rejects, review, card."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from instillm.data.audit import audit_file, read_audit_rows
from instillm.data.render import IGNORE_INDEX, RenderConfig, Renderer
from instillm.errors import DataError
from instillm.ui import data_tab
from instillm.ui.data_tab import ANY, NONE, RowFilter

SPAN = re.compile(r'<span class="tok (t|m)" title="token ([\d-]+) · id ([\d ]+) · (trained|masked)">(.*?)</span>', re.S)


@pytest.fixture(scope="module")
def renderer(tiny_tokenizer) -> Renderer:
    return Renderer(tiny_tokenizer, RenderConfig(max_length=64))


@pytest.fixture(scope="module")
def session(ui_data: Path, renderer: Renderer, tmp_path_factory) -> data_tab.DataSession:
    return data_tab.open_data(ui_data, renderer, tmp_path_factory.mktemp("work"))


def spans(markup: str) -> list[tuple[bool, list[int], str]]:
    """(trained, ids, text) of every token span."""
    return [
        (k == "t", [int(i) for i in ids.split()], html.unescape(text)) for k, _, ids, _, text in SPAN.findall(markup)
    ]


def test_open_counts_each_row_as_training_renders_it(session, renderer):
    assert data_tab.is_canonical(session.path) and session.imported is None and session.canonical == session.path
    assert [r.line for r in session.rows] == list(range(1, 16))
    first = renderer.render(session.row(1).example)
    assert (session.row(1).length, session.row(1).trained) == (len(first), first.n_trained)
    too_long = session.row(14)
    assert too_long.trained == 0 and too_long.length > 64  # its full length: training drops it
    assert session.row(15).example is None and session.row(15).trained == 0  # every turn train=false
    assert "15 rows" in data_tab.summary_text(session) and "3 row(s) flagged" in data_tab.summary_text(session)


def test_a_row_shows_its_trained_tokens_highlighted_with_ids_on_hover(session, renderer, tiny_tokenizer):
    rendered = renderer.render(session.row(1).example)
    shown = spans(data_tab.row_html(session, 1))
    assert [i for _, ids, _ in shown for i in ids] == rendered.input_ids
    trained = [text for is_trained, _, text in shown if is_trained]
    assert "".join(trained) == "cba<|im_end|>"  # the response and its end-of-turn token, nothing else
    labels = [lab != IGNORE_INDEX for lab in rendered.labels]
    assert [t for t, ids, _ in shown for _ in ids] == labels
    assert "".join(text for _, _, text in shown) == tiny_tokenizer.decode(rendered.input_ids)


def test_a_multibyte_character_split_over_tokens_is_shown_whole(renderer, tiny_tokenizer):
    from instillm.data.schema import from_prompt_completion

    ex = from_prompt_completion("Say it with an emoji", "ok 🙂 ✓ naïve", id="emoji")
    rendered = renderer.render(ex)
    shown = spans(data_tab.token_html(rendered, tiny_tokenizer))
    assert "\ufffd" not in "".join(text for _, _, text in shown)
    assert "".join(text for _, _, text in shown) == tiny_tokenizer.decode(rendered.input_ids)


def test_rows_training_cannot_use_say_why(session):
    assert "training drops this row" in data_tab.row_html(session, 14)
    assert not [s for s in spans(data_tab.row_html(session, 14)) if s[0]]  # nothing highlighted
    assert "every assistant turn has train=false" in data_tab.row_html(session, 15)
    with pytest.raises(DataError, match="no row at line 99"):
        data_tab.row_html(session, 99)


def test_the_audit_flags_the_planted_rows_as_instillm_data_audit_does(session, ui_data, renderer):
    flagged = {(flag, line) for flag, line, _, _ in data_tab.flagged_rows(session.report)}
    assert flagged == {("duplicate_prompt", 13), ("prompt_too_long", 14), ("no_trained_token", 15)}
    assert session.report.to_json() == audit_file(ui_data, renderer).to_json()
    counts = {flag: n for flag, n, _ in data_tab.audit_counts(session.report)}
    assert counts["duplicate_prompt"] == 1 and counts["response_truncated"] == 0
    assert data_tab.flagged_rows(session.report, "prompt_too_long") == [
        ["prompt_too_long", 14, "too-long", session.report.flags["prompt_too_long"][0].detail]
    ]
    assert "same rendered prompt as 'reverse-0' (line 1)" in html.unescape(data_tab.row_html(session, 13))


def lines(session, **kw) -> list[int]:
    return [r.line for r in data_tab.filter_rows(session.rows, RowFilter(**kw))]


def test_filters_and_pages(session):
    assert lines(session, task="upper") == list(range(7, 13))
    assert lines(session, flag="flagged") == [13, 14, 15] and lines(session, flag=NONE) == list(range(1, 13))
    assert lines(session, flag="duplicate_prompt") == [13]
    assert lines(session, min_length=100) == [14] and 15 not in lines(session, max_length=1000)
    assert lines(session, text="PLUM") == [3, 9] and lines(session, source="fixture", category="reverse") == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    facets = data_tab.facets(session.rows)
    assert facets["task"] == [ANY, "greet", "reverse", "summary", "upper"]
    shown, page, n_pages = data_tab.page_of(session.rows, 9, 4)
    assert (page, n_pages, [r.line for r in shown]) == (4, 4, [13, 14, 15])
    table = data_tab.table_rows(shown, {13: {"decision": "drop"}})
    assert table[0] == [13, "dup-of-reverse-0", "reverse", "", "fixture", table[0][5], 4, "duplicate_prompt", "drop"]
    assert len(table[0]) == len(data_tab.ROW_HEADERS)


def test_a_file_in_another_format_is_imported_and_its_rejects_are_browsable(alpaca_file, renderer, tmp_path):
    s = data_tab.open_data(alpaca_file, renderer, tmp_path)
    assert s.imported is not None and s.canonical.parent == tmp_path and len(s.rows) == 2
    assert alpaca_file.read_text().count("instruction") == 3  # the input is untouched
    assert "imported" in data_tab.summary_text(s) and "1 rejected" in data_tab.summary_text(s)
    [[reason, n]] = data_tab.reject_reasons(s.rejects)
    assert n == 1 and data_tab.reject_rows(s.rejects, "nonexistent") == []
    [row] = data_tab.reject_rows(s.rejects, reason)
    assert row[1] == 3 and "This row has no answer." in row[4]


def test_review_writes_the_decisions_into_meta_and_never_over_its_input(session, tmp_path):
    d = data_tab.decide({}, [1], "keep")
    d = data_tab.decide(d, [13, 14], "drop")
    d = data_tab.edit(d, session, 2, "gOD")
    assert data_tab.response_of(session, 2, d) == "gOD" and data_tab.response_of(session, 3, d) == "mulp"
    assert data_tab.review_counts(d, len(session.rows)) == "keep: 1, drop: 2, edit: 1; not reviewed: 11"
    saved = data_tab.save_review(session, d, tmp_path / "curated.jsonl")
    rows = [json.loads(x) for x in saved.output.read_text().splitlines()]
    assert [r["id"] for r in rows][:2] == ["reverse-0", "reverse-1"] and len(rows) == 13
    review = {r["id"]: r["meta"]["review"] for r in rows}
    assert review["reverse-0"] == {"decision": "keep", "from": f"{session.path}:1"}
    assert review["reverse-1"]["decision"] == "edit" and review["reverse-1"]["original"] == "god"
    assert rows[1]["messages"][-1]["content"] == "gOD" and review["upper-0"]["decision"] == "unreviewed"
    dropped = [json.loads(x) for x in saved.dropped_path.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in dropped] == [(13, "dropped_in_review"), (14, "dropped_in_review")]
    assert saved.counts == {"keep": 1, "drop": 2, "edit": 1, "unreviewed": 11}
    assert len(list(read_audit_rows(saved.output))) == 13  # canonical, as the audit reads it


def test_review_options_and_refusals(session, tmp_path):
    d = data_tab.decide(data_tab.decide({}, [1, 2, 3], "keep"), [3], "clear")
    only = data_tab.save_review(session, d, tmp_path / "kept.jsonl", include_unreviewed=False)
    assert len(only.output.read_text().splitlines()) == 2
    before = session.path.read_bytes()
    with pytest.raises(DataError, match="would overwrite input"):
        data_tab.save_review(session, d, session.path)
    assert session.path.read_bytes() == before
    with pytest.raises(DataError, match="empty"):
        data_tab.edit({}, session, 1, "   ")
    assert data_tab.edit({}, session, 15, "hello")[15]["decision"] == "edit"  # an untrained row may be edited
    with pytest.raises(DataError, match="decision"):
        data_tab.decide({}, [1], "maybe")


def test_the_data_card_is_shown_inline(session):
    page = html.unescape(data_tab.card_page(session))
    assert page.startswith("<iframe srcdoc=") and "Data card: data.jsonl" in page
    assert "Near-duplicate clusters" in page and "not computed" not in page and "no eval set given" in page


def test_the_card_measures_overlap_with_a_runs_splits_and_named_eval_files(session, tiny_run, tmp_path):
    from instillm.ui import runs_tab

    evals = tmp_path / "evals.jsonl"
    evals.write_text(json.dumps({"instruction": "reverse the word ABC"}) + "\n", encoding="utf-8")
    sets = runs_tab.eval_sets(runs_tab.find_run(tiny_run))
    page = html.unescape(data_tab.card_page(session, data_tab.eval_file_list(f" {evals} ,\n"), sets))
    assert "Eval sets checked: heldout_instances (" in page and "evals.jsonl (0 text(s) for n-grams)" in page
    assert "2 row(s) overlap." in page  # reverse-0 and its planted duplicate: the same prompt
    assert "same prompt: reverse the word abc" in page and "dup-of-reverse-0" in page


def test_eval_files_typed_in_the_card_tab(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.json"
    a.write_text("{}\n")
    b.write_text("[]")
    assert data_tab.eval_file_list(f"{a}\n\n {b} ") == [str(a), str(b)] == data_tab.eval_file_list(f"{a},{b}")
    assert data_tab.eval_file_list("  ") == []
    with pytest.raises(DataError, match="nope.jsonl"):
        data_tab.eval_file_list(f"{a}, {tmp_path / 'nope.jsonl'}")
