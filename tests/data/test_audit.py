"""Mask audit: each flag on the row that causes it, thresholds, the JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instillm.data.audit import FLAGS, audit_examples, audit_file, parse_fail_on, parse_rate, read_audit_rows
from instillm.data.render import RenderConfig, Renderer
from instillm.data.schema import Example, Message
from instillm.errors import ConfigError, DataError

# ChatML, except that an earlier assistant turn loses its <think>...</think> part (as Qwen3's template
# does): a conversation with reasoning in a non-final turn is not prefix-consistent.
THINK_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|im_start|>assistant{{ '\\n' }}"
    "{% if loop.last %}{{ message['content'] }}{% else %}{{ message['content'].split('</think>')[-1] }}{% endif %}"
    "<|im_end|>{{ '\\n' }}"
    "{% else %}<|im_start|>{{ message['role'] }}{{ '\\n' }}{{ message['content'] }}<|im_end|>{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)
# Assistant turns end with a blank line, never with EOS or an end-of-turn token.
NO_EOS_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}Assistant: {{ message['content'] }}"
    "{{ '\\n\\n' }}{% else %}User: {{ message['content'] }}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)


def u(text: str) -> Message:
    return Message("user", text)


def a(text: str, train: bool | None = None) -> Message:
    return Message("assistant", text, train)


def ex(id: str, *messages: Message) -> Example:
    return Example(messages=messages, id=id)


def renderer(tok, max_length: int = 64, truncation: str = "drop", template: str = "chatml") -> Renderer:
    return Renderer(tok, RenderConfig(template=template, max_length=max_length, truncation=truncation))


def flagged(report) -> dict[str, list[tuple[str, int]]]:
    return {f: [(r.id, r.line) for r in rows] for f, rows in report.flags.items() if rows}


def test_clean_rows_raise_no_flag(tiny_tokenizer):
    report = audit_examples(
        [ex("a", u("Say hi."), a("Hi!")), ex("b", u("Say bye."), a("Bye!"))], renderer(tiny_tokenizer)
    )
    assert report.n_examples == 2 and report.n_flagged == 0 and flagged(report) == {}
    assert report.counts == dict.fromkeys(FLAGS, 0) and report.exceeded(0.0, dict.fromkeys(FLAGS, 0.0)) == []


@pytest.mark.parametrize("truncation", ["drop", "error", "truncate-prompt"])
def test_length_flags_name_the_cause(tiny_tokenizer, truncation):
    rows = [
        ex("ok", u("Say hi."), a("Hi!")),
        ex("long-answer", u("Tell a story."), a("word " * 80)),
        ex("long-prompt", u("blah " * 80), a("ok")),
    ]
    report = audit_examples(rows, renderer(tiny_tokenizer, 48, truncation))
    assert flagged(report) == {"response_truncated": [("long-answer", 2)], "prompt_too_long": [("long-prompt", 3)]}
    assert "trained tokens lost" in report.flags["response_truncated"][0].detail
    assert "max_length 48" in report.flags["prompt_too_long"][0].detail


def test_truncate_prompt_masking_an_earlier_response_is_response_truncated(tiny_tokenizer):
    multi = ex("multi", u("q"), a("word " * 20), u("next"), a("word " * 30))
    report = audit_examples([multi], renderer(tiny_tokenizer, 50, "truncate-prompt"))
    assert flagged(report) == {"response_truncated": [("multi", 1)]}
    assert "the start is cut off" in report.flags["response_truncated"][0].detail


def test_truncate_prompt_cutting_only_the_prompt_is_not_flagged(tiny_tokenizer):
    row = ex("row", u("blah " * 10), a("short answer"))
    n = len(renderer(tiny_tokenizer, 10_000).render(row))
    report = audit_examples([row], renderer(tiny_tokenizer, n - 2, "truncate-prompt"))
    assert report.n_flagged == 0


def test_duplicate_prompt_names_the_first_row(tiny_tokenizer):
    rows = [
        ex("first", u("Say hi."), a("Hi!")),
        ex("other", u("Say bye."), a("Bye")),
        ex("again", u("Say hi."), a("Yo")),
    ]
    report = audit_examples(rows, renderer(tiny_tokenizer))
    (dup,) = report.flags["duplicate_prompt"]
    assert (dup.id, dup.line, dup.first_id, dup.first_line) == ("again", 3, "first", 1)
    assert dup.to_json() == {"id": "again", "line": 3, "detail": dup.detail, "first_id": "first", "first_line": 1}


def test_template_inconsistent_on_the_row_it_fails(tiny_tokenizer, tmp_path: Path):
    path = tmp_path / "think.jinja"
    path.write_text(THINK_TEMPLATE, encoding="utf-8")
    rows = [
        ex("plain", u("q"), a("yes")),
        ex("think", u("q1"), a("<think>hmm</think>yes"), u("q2"), a("no")),
        ex("think-last", u("q3"), a("<think>hmm</think>yes")),
    ]
    report = audit_examples(rows, renderer(tiny_tokenizer, template=str(path)))
    assert flagged(report) == {"template_inconsistent": [("think", 2)]}
    assert "prefix-consistent" in report.flags["template_inconsistent"][0].detail


def test_template_that_raises_is_template_inconsistent(tiny_tokenizer, tmp_path: Path):
    path = tmp_path / "nosys.jinja"
    path.write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}"
        + THINK_TEMPLATE,
        encoding="utf-8",
    )
    rows = [ex("user", u("q"), a("yes")), ex("system", Message("system", "be brief"), u("q"), a("yes"))]
    report = audit_examples(rows, renderer(tiny_tokenizer, template=str(path)))
    assert flagged(report) == {"template_inconsistent": [("system", 2)]}
    assert "no system messages" in report.flags["template_inconsistent"][0].detail


def test_eos_not_trained_with_a_template_without_end_token(tiny_tokenizer, tmp_path: Path):
    path = tmp_path / "noeos.jinja"
    path.write_text(NO_EOS_TEMPLATE, encoding="utf-8")
    rows = [ex("a", u("q"), a("yes")), ex("b", u("r"), a("no"))]
    report = audit_examples(rows, renderer(tiny_tokenizer, template=str(path)))
    assert flagged(report) == {"eos_not_trained": [("a", 1), ("b", 2)]}
    assert report.rate("eos_not_trained") == 1.0


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_audit_file_flags_untrained_rows_with_file_lines(tiny_tokenizer, tmp_path: Path):
    msgs = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]
    untrained = [msgs[0], {**msgs[1], "train": False}]
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"id": "ok", "messages": msgs}) + "\n\n" + json.dumps({"id": "off", "messages": untrained}) + "\n"
    )
    report = audit_file(data, renderer(tiny_tokenizer))
    assert flagged(report) == {"no_trained_token": [("off", 3)], "duplicate_prompt": [("off", 3)]}
    assert "train=false" in report.flags["no_trained_token"][0].detail
    assert [line for line, _, ex in read_audit_rows(data) if ex is None] == [3]


def test_audit_file_errors_are_one_line(tiny_tokenizer, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: no_response"):
        audit_file(bad, renderer(tiny_tokenizer))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no examples to audit"):
        audit_file(empty, renderer(tiny_tokenizer))


def test_thresholds_and_json(tiny_tokenizer):
    rows = [ex(str(i), u(f"question {i}"), a("answer")) for i in range(9)] + [ex("dup", u("question 0"), a("x"))]
    report = audit_examples(rows, renderer(tiny_tokenizer))
    assert report.rate("duplicate_prompt") == pytest.approx(0.1) and report.rate() == pytest.approx(0.1)
    assert report.exceeded(0.1) == [] and report.exceeded(None, {"duplicate_prompt": 0.1}) == []
    assert report.exceeded(0.05) == ["rows with any flag: 1 of 10 rows (0.1000) > 0.05"]
    assert report.exceeded(None, {"duplicate_prompt": 0.0}) == ["duplicate_prompt: 1 of 10 rows (0.1000) > 0"]
    out = report.to_json(0.5, {"duplicate_prompt": 0.0})
    assert set(out) == {
        "n_examples",
        "n_flagged",
        "flagged_rate",
        "counts",
        "rates",
        "flags",
        "settings",
        "thresholds",
        "exceeded",
        "passed",
    }
    assert out["passed"] is False and len(out["exceeded"]) == 1
    assert set(out["flags"]) == set(FLAGS) and out["flags"]["duplicate_prompt"][0]["first_id"] == "0"
    assert out["settings"] == {"template": "chatml", "max_length": 64, "truncation": "drop"}
    json.dumps(out)


def test_parse_thresholds():
    assert parse_fail_on(["duplicate_prompt=0.1", "no_trained_token=0"]) == {
        "duplicate_prompt": 0.1,
        "no_trained_token": 0.0,
    }
    for spec in ("duplicate_prompt", "nope=0.1", "duplicate_prompt=x", "duplicate_prompt=1.5"):
        with pytest.raises(ConfigError, match="--fail-on"):
            parse_fail_on([spec])
    with pytest.raises(ConfigError, match="between 0 and 1"):
        parse_rate("-0.1", "--max-flagged")
