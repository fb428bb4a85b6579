"""`instillm data audit` and `instillm data card` on a file with planted defects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from instillm.cli import app
from tests.data.test_audit import THINK_TEMPLATE

RUNNER = CliRunner()
EVAL_TEXT = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
POEM = "Write a poem about the sea and the sky and the stars tonight"


def invoke(*args: str):
    return RUNNER.invoke(app, list(args), env={"COLUMNS": "250"})


def turn(role: str, content: str, **extra) -> dict:
    return {"role": role, "content": content, **extra}


# (id, messages, the audit flag planted in the row or None); line = position + 1
PLANTED = [
    ("ok", [turn("user", "Say hi."), turn("assistant", "Hi!")], None),
    ("long-answer", [turn("user", "Tell a story."), turn("assistant", "word " * 80)], "response_truncated"),
    ("long-prompt", [turn("user", "blah " * 80), turn("assistant", "ok")], "prompt_too_long"),
    ("dup", [turn("user", "Say hi."), turn("assistant", "Hello there!")], "duplicate_prompt"),
    ("untrained", [turn("user", "Ignore me."), turn("assistant", "nothing", train=False)], "no_trained_token"),
    (
        "think",
        [turn("user", "q1"), turn("assistant", "<think>hmm</think>yes"), turn("user", "q2"), turn("assistant", "no")],
        "template_inconsistent",
    ),
    ("near-1", [turn("user", POEM), turn("assistant", "Waves roll in.")], None),
    ("near-2", [turn("user", POEM + "!"), turn("assistant", "Waves roll in.")], None),
    ("leak", [turn("user", f"Please continue: {EVAL_TEXT}"), turn("assistant", "Sure.")], None),
]


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "planted.jsonl"
    data.write_text("".join(json.dumps({"id": i, "messages": m}) + "\n" for i, m, _ in PLANTED), encoding="utf-8")
    template = tmp_path / "think.jinja"
    template.write_text(THINK_TEMPLATE, encoding="utf-8")
    eval_file = tmp_path / "evalset.jsonl"
    eval_file.write_text(json.dumps({"prompt": EVAL_TEXT}) + "\n", encoding="utf-8")
    return {"data": data, "template": template, "eval": eval_file}


def audit(paths: dict[str, Path], model: Path, *extra: str):
    base = ("data", "audit", str(paths["data"]), "--model", str(model), "--template", str(paths["template"]))
    return invoke(*base, "--max-length", "64", *extra)


def test_audit_flags_every_planted_defect(planted, tiny_model_dir: Path) -> None:
    res = audit(planted, tiny_model_dir, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    want = {flag: [] for flag in report["flags"]}
    for line, (row_id, _, flag) in enumerate(PLANTED, 1):
        if flag:
            want[flag].append((row_id, line))
    assert {f: [(r["id"], r["line"]) for r in rows] for f, rows in report["flags"].items()} == want
    assert report["flags"]["duplicate_prompt"][0]["first_id"] == "ok"
    assert report["n_examples"] == len(PLANTED) and report["n_flagged"] == 5 and report["passed"] is True
    assert report["counts"]["eos_not_trained"] == 0 and report["thresholds"] == {"max_flagged": None, "fail_on": {}}


@pytest.mark.parametrize(
    ("thresholds", "code"),
    [
        ((), 0),
        (("--max-flagged", "0.6"), 0),  # 5 of 9 rows flagged: 0.556
        (("--max-flagged", "0.5"), 1),
        (("--fail-on", "duplicate_prompt=0.2"), 0),  # 1 of 9: 0.111
        (("--fail-on", "duplicate_prompt=0.1"), 1),
        (("--fail-on", "eos_not_trained=0", "--fail-on", "prompt_too_long=0.2"), 0),
        (("--fail-on", "eos_not_trained=0", "--fail-on", "prompt_too_long=0"), 1),
    ],
)
def test_audit_exit_code_follows_the_thresholds(planted, tiny_model_dir: Path, thresholds, code) -> None:
    res = audit(planted, tiny_model_dir, *thresholds)
    assert res.exit_code == code, res.output
    assert "template_inconsistent" in res.stdout and "think:6" in res.stdout
    assert ("threshold exceeded" in res.stderr) == bool(code)


def test_audit_json_reports_the_exceeded_threshold(planted, tiny_model_dir: Path) -> None:
    res = audit(planted, tiny_model_dir, "--json", "--fail-on", "no_trained_token=0")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["passed"] is False and report["exceeded"] == ["no_trained_token: 1 of 9 rows (0.1111) > 0"]


def test_audit_errors_are_one_line(planted, tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": PLANTED[0][1]}) + "\n{not json\n", encoding="utf-8")
    for res in (
        invoke("data", "audit", str(bad), "--model", str(tiny_model_dir)),
        audit(planted, tiny_model_dir, "--fail-on", "nope=0.1"),
        audit(planted, tiny_model_dir, "--max-flagged", "2"),
    ):
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1 and res.output.strip().startswith("error:"), res.output
    assert "bad.jsonl:2: malformed_json" in invoke("data", "audit", str(bad), "--model", str(tiny_model_dir)).output


def test_card_finds_the_planted_near_duplicates_and_eval_overlap(planted, tmp_path: Path) -> None:
    out = tmp_path / "card.html"
    res = invoke("data", "card", str(planted["data"]), "--eval", str(planted["eval"]), "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    card = json.loads(res.stdout)
    assert card["n_examples"] == len(PLANTED)
    assert [c["ids"] for c in card["near_duplicates"]["clusters"]] == [["near-1", "near-2"]]
    assert [(r["id"], r["eval_set"]) for r in card["eval_overlap"]["rows"]] == [("leak", "evalset.jsonl")]
    assert "leaving out template text" in card["eval_overlap"]["rule"]  # the card's rule, as in run and the UI
    html = out.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 4 and "near-1 (row 7), near-2 (row 8)" in html


def test_card_refuses_to_write_over_its_input(planted) -> None:
    data = planted["data"]
    before = data.read_bytes()
    res = invoke("data", "card", str(data), "-o", str(data.parent / "." / data.name))
    assert res.exit_code == 1 and "would overwrite input" in res.output and data.read_bytes() == before
    res = invoke("data", "card", str(data))
    assert res.exit_code == 1 and "-o" in res.output


def test_card_summary_line(planted, tmp_path: Path) -> None:
    res = invoke("data", "card", str(planted["data"]), "-o", str(tmp_path / "c.html"))
    assert res.exit_code == 0, res.output
    assert "9 rows; 1 near-duplicate cluster(s)" in res.stdout and (tmp_path / "c.html").is_file()
