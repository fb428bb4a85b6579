"""Rule filters: each rule on crafted rows, the language heuristic on real data, accounting of filter_file."""

from __future__ import annotations

import json

import pytest

from instillm.curate.filters import RuleFilter, filter_file, not_english
from instillm.data.importer import read_examples, write_examples
from instillm.data.schema import Example, Message
from instillm.errors import ConfigError


def _conv(user: str, answer: str, *more: str) -> Example:
    turns = [user, answer, *more]
    return Example(messages=tuple(Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)))


def _reason(ex: Example, **kw) -> str | None:
    err = RuleFilter(**kw).check(ex)
    return None if err is None else err.reason


OK_ANSWER = "Here is a clear and complete answer."


@pytest.mark.parametrize(
    "user,answer,reason",
    [
        ("Give me three tips for better sleep.", OK_ANSWER, None),
        ("Give me three tips for better sleep.", "...", "empty_response"),
        (
            "Give me three tips for better sleep.",
            "give me three tips, for better sleep!",
            "response_repeats_instruction",
        ),
        ("Summarize it now.", OK_ANSWER, "instruction_too_short"),  # 3 words <= 3: Self-Instruct's rule
        ("Summarize this now, please.", OK_ANSWER, None),  # 4 words
        (" ".join(["word"] * 151), OK_ANSWER, "instruction_too_long"),
        (" ".join(["word"] * 150), OK_ANSWER, None),
        ("Describe the image below in two sentences.", OK_ANSWER, "blacklisted_keyword"),
        ("Please GO TO the website and report back.", OK_ANSWER, "blacklisted_keyword"),
        ("Explain how Maps are made by cartographers.", OK_ANSWER, "blacklisted_keyword"),
        ("Explain why the filed report was late today.", OK_ANSWER, None),  # word boundary: 'filed' is not 'file'
        ("Explain why imagery matters in poetry today.", OK_ANSWER, None),
        ("Schreibe ein Gedicht über den Ozean und die Wellen am Strand.", OK_ANSWER, "not_english"),
        ("Écrivez un poème sur la mer et les vagues dans la nuit.", OK_ANSWER, "not_english"),
        ("Напишите стихотворение о море и волнах ночью на пляже.", OK_ANSWER, "not_english"),
        ("写一首关于大海和夜晚海浪的诗，要求押韵并且有四行。", OK_ANSWER, "not_english"),
        ("Fix this code: def f(x): return [i for i in range(x) if i % 2]", OK_ANSWER, None),
        ("Translate 'Je suis un étudiant' into English for me.", "I am a student.", None),
    ],
)
def test_each_rule(user, answer, reason):
    assert _reason(_conv(user, answer)) == reason


def test_instruction_is_all_user_turns_and_response_is_the_last_turn():
    ex = _conv("Hi there friend.", "Hello.", "Now describe a picture of a cat.", OK_ANSWER)
    assert _reason(ex) == "blacklisted_keyword"  # found in the second user turn
    assert _reason(_conv("Give me three tips for better sleep.", "Sleep.", "And two more tips please?", "No")) is None


def test_settings_change_the_rules():
    ex = _conv("Describe the image below in two sentences.", "Short.")
    assert _reason(ex, blacklist=()) is None
    assert _reason(ex, blacklist=["sentences"]) == "blacklisted_keyword"
    assert _reason(ex, min_response_words=2) == "response_too_short"
    assert _reason(ex, blacklist=(), min_response_words=None, max_response_words=0) == "response_too_long"
    assert _reason(ex, blacklist=(), min_words=None, max_words=3) == "instruction_too_long"
    foreign = _conv("Schreibe ein Gedicht über den Ozean und die Wellen am Strand.", OK_ANSWER)
    assert _reason(foreign, language=None) is None
    assert (
        _reason(_conv("Write a program that sorts a list.", OK_ANSWER), self_instruct_rules=True) == "write_a_program"
    )
    assert (
        _reason(_conv("- list three colors please", OK_ANSWER), self_instruct_rules=True) == "starts_with_punctuation"
    )
    assert _reason(_conv("- list three colors please", OK_ANSWER)) is None
    with pytest.raises(ConfigError):
        RuleFilter(language="de")
    with pytest.raises(ConfigError):
        RuleFilter(min_words=10, max_words=5)
    with pytest.raises(ConfigError):
        RuleFilter(blacklist="image")


def test_language_heuristic_keeps_real_english_instructions(shared_data):
    rows = json.loads((shared_data / "alpaca_eval/gpt4_outputs.json").read_text())
    with open(shared_data / "ifeval/input_data.jsonl", encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    flagged = [t for t in [r["instruction"] for r in rows] + prompts if not_english(t)]
    assert len(flagged) <= 3, flagged  # AlpacaEval holds a couple of non-English instructions
    with open(shared_data / "ifeval/gpt4_responses.jsonl", encoding="utf-8") as f:
        responses = [json.loads(line)["response"] for line in f]
    assert 15 <= sum(1 for t in responses if not_english(t)) <= 40  # IFEval asks for ~30 non-English answers


def test_filter_file_accounts_for_every_row(tmp_path):
    rows = [
        _conv("Give me three tips for better sleep.", OK_ANSWER),
        _conv("Summarize it.", OK_ANSWER),
        _conv("Draw a cat using ASCII characters please.", OK_ANSWER),
        _conv("Explain how vaccines train the immune system.", OK_ANSWER),
        _conv("Écrivez un poème sur la mer et les vagues dans la nuit.", OK_ANSWER),
    ]
    inp = write_examples(rows, tmp_path / "in.jsonl")
    s = filter_file(inp, tmp_path / "out.jsonl")
    assert (s.n_in, s.n_kept) == (5, 2)
    assert s.rejected_by_reason == {"instruction_too_short": 1, "blacklisted_keyword": 1, "not_english": 1}
    assert s.n_kept + s.n_rejected == s.n_in
    assert len(list(read_examples(s.output))) == 2
    rej = [json.loads(line) for line in s.rejects_path.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rej] == [
        (2, "instruction_too_short"),
        (3, "blacklisted_keyword"),
        (5, "not_english"),
    ]
    assert all(set(r) == {"file", "line", "reason", "detail", "raw"} and r["detail"] for r in rej)
    assert "'Draw'" in rej[1]["detail"]
