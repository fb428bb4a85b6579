"""Decontamination: n-gram overlap with eval sets, the matched set and gram in the rejects, accounting."""

from __future__ import annotations

import json

import pytest

from instillm.curate.decontaminate import EvalIndex, decontaminate_file
from instillm.data.importer import read_examples, write_examples
from instillm.data.schema import Example, Message
from instillm.errors import ConfigError, DataError

EVAL_A = "The quick brown fox jumps over the lazy dog while the farmer watches from his old red barn door."
EVAL_B = "Describe in detail how photosynthesis converts sunlight water and carbon dioxide into glucose and oxygen."
EVAL_SHORT = "What is the capital city of the country Australia?"  # 9 tokens: a whole-text gram
EVAL_TINY = "Write a poem about love."  # 5 tokens: below min_tokens, never a gram


def _conv(user: str, answer: str, system: str | None = None) -> Example:
    msgs = ([Message("system", system)] if system else []) + [Message("user", user), Message("assistant", answer)]
    return Example(messages=tuple(msgs))


@pytest.fixture()
def eval_sets(tmp_path):
    a = tmp_path / "set_a.jsonl"
    a.write_text(json.dumps({"key": 1, "prompt": EVAL_A, "ids": ["x:y"]}) + "\n")
    b = tmp_path / "set_b.json"
    b.write_text(
        json.dumps(
            [
                {"instruction": EVAL_B, "output": "unrelated"},
                {"instruction": EVAL_SHORT, "output": "Canberra."},
                {"instruction": EVAL_TINY, "output": "Roses."},
            ]
        )
    )
    return [a, b]


def test_contaminated_rows_are_removed_with_the_matching_set_and_gram(tmp_path, eval_sets):
    b13 = "in DETAIL: how photosynthesis converts sunlight, WATER and carbon-dioxide into glucose and oxygen!"
    rows = [
        _conv("Tell me a story.", "Once upon a time, " + EVAL_A.upper()),  # 1 set_a (response side)
        _conv(f"Please answer: {b13}", "Sure."),  # 2 set_b (case, punctuation)
        _conv("Quiz: what is the capital city of the country Australia? Be brief.", "Canberra"),  # 3 short whole text
        _conv("Write a poem about love.", "Roses are red."),  # 4 kept: 5 tokens < min_tokens
        _conv(
            "Describe how photosynthesis converts sunlight water and carbon dioxide into glucose", "ok"
        ),  # 5 kept: 12-gram
        _conv("Hello there.", "Hi.", system=EVAL_A),  # 6 kept: system prompts not checked
    ]
    inp = write_examples(rows, tmp_path / "train.jsonl")
    s = decontaminate_file(inp, tmp_path / "clean.jsonl", eval_sets)
    assert (s.n_in, s.n_kept, s.rejected_by_reason) == (6, 3, {"contaminated": 3})
    assert s.matched_eval_sets == {"set_a.jsonl": 1, "set_b.json": 2}
    assert s.n_kept + s.n_rejected == s.n_in
    assert [e.messages[-1].content for e in read_examples(s.output)] == ["Roses are red.", "ok", "Hi."]
    rej = [json.loads(line) for line in s.rejects_path.read_text().splitlines()]
    assert [r["line"] for r in rej] == [1, 2, 3]
    assert "set_a.jsonl" in rej[0]["detail"] and "13-gram" in rej[0]["detail"]
    assert (
        "set_b.json" in rej[1]["detail"]
        and "photosynthesis converts sunlight water and carbon dioxide" in rej[1]["detail"]
    )
    assert (
        "whole eval text (9 tokens)" in rej[2]["detail"] and "capital city of the country australia" in rej[2]["detail"]
    )
    assert all(r["reason"] == "contaminated" and json.loads(r["raw"])["messages"] for r in rej)


def test_n_and_min_tokens_are_configurable(tmp_path, eval_sets):
    rows = [_conv("Write a poem about love, please.", "x"), _conv("a fox jumps over the lazy dog", "y")]
    inp = write_examples(rows, tmp_path / "train.jsonl")
    assert decontaminate_file(inp, tmp_path / "o.jsonl", eval_sets).n_kept == 2
    s = decontaminate_file(inp, tmp_path / "o.jsonl", eval_sets, n=5, min_tokens=5)
    assert s.n_kept == 0 and s.matched_eval_sets == {"set_b.json": 1, "set_a.jsonl": 1}


def test_index_finds_nothing_in_unrelated_text():
    index = EvalIndex(n=3)
    index.add_set("s", ["alpha beta gamma delta"])
    assert index.find("beta gamma delta!") == ("s", "beta gamma delta")
    assert index.find("alpha gamma beta delta") is None
    assert index.find("") is None


def test_real_eval_set_copies_are_found(tmp_path, shared_data):
    evalset = shared_data / "self_instruct/user_oriented_instructions.jsonl"
    lines = evalset.read_text(encoding="utf-8").splitlines()
    copied = [json.loads(line) for line in lines[:3]]
    with open(shared_data / "self_instruct/seed_tasks.jsonl", encoding="utf-8") as f:
        seeds = [json.loads(next(f)) for _ in range(20)]
    rows = [_conv(r["instruction"], r["instances"][0]["output"] or "x") for r in copied + seeds]
    inp = write_examples(rows, tmp_path / "train.jsonl")
    s = decontaminate_file(inp, tmp_path / "clean.jsonl", [evalset])
    assert s.matched_eval_sets == {"user_oriented_instructions.jsonl": 3}
    assert s.n_kept == 20


def test_errors(tmp_path):
    inp = write_examples([_conv("a b c", "d")], tmp_path / "train.jsonl")
    with pytest.raises(ConfigError):
        decontaminate_file(inp, tmp_path / "o.jsonl", [])
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"a": "too short"}\n')
    with pytest.raises(DataError, match="holds no text"):
        decontaminate_file(inp, tmp_path / "o.jsonl", [empty])
    with pytest.raises(DataError):
        decontaminate_file(inp, tmp_path / "o.jsonl", [tmp_path / "missing.jsonl"])


def test_output_or_rejects_over_an_eval_set_is_refused_before_anything_is_written(tmp_path, eval_sets):
    inp = write_examples([_conv("Tell me a story.", "Once upon a time.")], tmp_path / "train.jsonl")
    before = {p: p.read_bytes() for p in eval_sets}
    with pytest.raises(DataError, match=r"output .*set_a\.jsonl would overwrite input .*set_a\.jsonl"):
        decontaminate_file(inp, eval_sets[0], eval_sets)
    rejects_over_eval = tmp_path / "out.rejects.jsonl"
    rejects_over_eval.write_bytes(before[eval_sets[0]])
    with pytest.raises(DataError, match="rejects file .* would overwrite input"):
        decontaminate_file(inp, tmp_path / "out.jsonl", [rejects_over_eval, eval_sets[1]])
    assert {p: p.read_bytes() for p in eval_sets} == before
    assert rejects_over_eval.read_bytes() == before[eval_sets[0]]
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_refuses_an_output_over_an_eval_set(tmp_path, eval_sets):
    from typer.testing import CliRunner

    from instillm.cli import app

    inp = write_examples([_conv("Tell me a story.", "Once upon a time.")], tmp_path / "train.jsonl")
    before = eval_sets[0].read_bytes()
    res = CliRunner().invoke(
        app, ["data", "decontaminate", str(inp), "--eval", str(eval_sets[0]), "-o", str(eval_sets[0])]
    )
    assert res.exit_code == 1 and "would overwrite input" in " ".join(res.output.split())
    assert eval_sets[0].read_bytes() == before
