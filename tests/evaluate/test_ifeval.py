"""IFEval checkers, text utilities and scoring: per-checker pass/fail and edge cases."""

from __future__ import annotations

import json

import pytest

from instillm.evaluate.ifeval import (
    INSTRUCTIONS,
    PromptResult,
    check,
    evaluate_responses,
    get_checker,
    load_inputs,
    load_responses,
    score_file,
    summarize,
    write_outputs,
)
from instillm.evaluate.ifeval.evaluate import response_variants
from instillm.evaluate.ifeval.text import (
    count_sentences,
    count_words,
    detect_language,
    split_sentences,
    word_tokens,
)

EN = "This is a plain English sentence about the weather and the garden today."

# (instruction id, kwargs, passing response, failing response): one row per checker at least.
CASES = [
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "THE END is NEAR.",
        "The END is near.",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "The END is near.",
        "THE END is NEAR.",
    ),
    ("change_case:english_capital", {}, EN.upper(), EN),
    ("change_case:english_lowercase", {}, EN.lower(), EN),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "  say HI. Hi!", "Hi! Say hi."),
    ("combination:two_responses", {}, "one\n******\ntwo", "one\n******\none"),
    ("combination:two_responses", {}, "******one******two******", "one******\n******two"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[a] and [b]", "[a] only"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\np. s. bye", "Hi. PS bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S bye", "Hi.\nP.S. bye"),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "x\nNOTE: y", "x\nNote y"),
    ("detectable_format:constrained_response", {}, "Well. My answer is maybe.", "my answer is yes."),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:json_format", {}, "[1, 2]", "Here: [1, 2]"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nx\nSection 2\ny",
        "Section 1\nx\nsection 2\ny",
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n- b\n**bold**", "* a\n* b\n- c"),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*one* and **two**",
        "*one* and ** ** and *\n*",
    ),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "<< >> and <<broken\n>>"),
    ("keywords:existence", {"keywords": ["Apple", "pie"]}, "apple PIE", "apple tart"),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "concatenate", "A Cat sat"),
    ("keywords:frequency", {"keyword": "ha", "frequency": 3, "relation": "at least"}, "Ha ha HA", "ha ha"),
    ("keywords:frequency", {"keyword": "ha", "frequency": 3, "relation": "less than"}, "ha ha", "Ha ha HA"),
    ("keywords:letter_frequency", {"letter": "Z", "let_frequency": 2, "let_relation": "at least"}, "zZ", "z"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "z", "zZ"),
    (
        "language:response_language",
        {"language": "de"},
        "Das ist ein kurzer deutscher Satz über das Wetter und den Garten heute.",
        EN,
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
        'First.\n\n"Then, second.',
        "First.\n\nNow second.",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\nb", "a\n***\n***\nb"),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"}, "One. Two!", "One only."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"}, "One only.", "One. Two?"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "a b c", "a b"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "a b", "a-b-c"),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, one."),
    ("startend:end_checker", {"end_phrase": "Any questions?"}, ' ... any QUESTIONS?" ', "Any questions? No."),
    ("startend:quotation", {}, ' "quoted" ', '"unclosed'),
]


def test_registry_has_the_25_ids_and_every_one_is_tested():
    assert len(INSTRUCTIONS) == 25
    assert {c[0] for c in CASES} == set(INSTRUCTIONS)


@pytest.mark.parametrize(("iid", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_checker_pass_and_fail(iid, kwargs, good, bad):
    assert check(iid, good, kwargs) is True
    assert check(iid, bad, kwargs) is False


@pytest.mark.parametrize(
    ("iid", "kwargs"),
    [(c[0], c[1]) for c in CASES if c[0] != "language:response_language"],
    ids=[c[0] for c in CASES if c[0] != "language:response_language"],
)
def test_blank_response_fails_every_instruction_in_both_modes(iid, kwargs):
    row = {"key": 1, "prompt": "p", "instruction_id_list": [iid], "kwargs": [kwargs]}
    for mode in ("strict", "loose"):
        for blank in ("", "  \n "):
            [res] = evaluate_responses([row], {"p": blank}, mode)
            assert res.follow_instruction_list == [False]


def test_relation_boundaries_are_strict_less_than_and_inclusive_at_least():
    at_least = {"num_words": 3, "relation": "at least"}
    less = {"num_words": 3, "relation": "less than"}
    assert check("length_constraints:number_words", "a b c", at_least)
    assert not check("length_constraints:number_words", "a b c", less)
    assert check("length_constraints:number_words", "a b", less)


def test_unknown_relation_and_unknown_id_and_missing_kwarg_raise():
    with pytest.raises(ValueError, match="relation"):
        check("length_constraints:number_words", "a", {"num_words": 1, "relation": "exactly"})
    with pytest.raises(KeyError, match="unknown IFEval"):
        get_checker("nope:nope")
    with pytest.raises(TypeError):
        check("length_constraints:number_words", "a", {"relation": "at least"})


def test_case_sensitivity_of_keyword_checkers():
    assert check("keywords:existence", "APPLE", {"keywords": ["apple"]})
    assert check("keywords:forbidden_words", "Category", {"forbidden_words": ["cat"]})  # whole words
    assert not check("keywords:forbidden_words", "A CAT.", {"forbidden_words": ["cat"]})
    assert check("keywords:frequency", "Dog dog DOG", {"keyword": " dog ", "frequency": 3, "relation": "at least"})
    assert not check("change_case:english_lowercase", EN.lower() + " OK", {})
    assert check("combination:repeat_prompt", "WRITE IT. done", {"prompt_to_repeat": "write it."})


def test_bullets_ignore_bold_lines_and_count_indented_items():
    assert check("detectable_format:number_bullet_lists", "  * a\n\t- b\n**Bold**", {"num_bullets": 2})


def test_highlights_count_bold_once_and_skip_empty_spans():
    kw = {"num_highlights": 2}
    assert check("detectable_format:number_highlighted_sections", "**bold**", {"num_highlights": 1})
    assert not check("detectable_format:number_highlighted_sections", "**bold**", kw)
    assert not check("detectable_format:number_highlighted_sections", "*a* * * ****", kw)


def test_section_spliter_is_a_regex_and_case_sensitive():
    kw = {"section_spliter": "SECTION", "num_sections": 1}
    assert check("detectable_format:multiple_sections", "SECTION 1 text", kw)
    assert not check("detectable_format:multiple_sections", "Section 1 text", kw)


def test_nth_paragraph_out_of_range_and_empty_nth_fail():
    kw = {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"}
    assert not check("length_constraints:nth_paragraph_first_word", "a\n\nb", kw)
    kw = {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "b"}
    assert not check("length_constraints:nth_paragraph_first_word", "a\n\n\n\nb", kw)


def test_language_checkers_pass_when_langdetect_cannot_decide():
    assert detect_language("12345 !!!") is None
    assert check("language:response_language", "12345 !!!", {"language": "fr"})
    assert not check("change_case:english_capital", "12345 !!!", {})  # no cased letter: not upper


def test_detect_language_is_deterministic():
    text = "Kwa nini pete ya uchumba ni kama mpira wa miguu"
    assert len({detect_language(text) for _ in range(5)}) == 1


def test_count_words_matches_regexp_tokenizer():
    assert count_words("Don't stop-me now: 3.5 km, naïve café!") == 10
    assert count_words("") == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world. This is it.", ["Hello world.", "This is it."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("Dr. Smith met Mr. Jones in the U.S. yesterday.", ["Dr. Smith met Mr. Jones in the U.S. yesterday."]),
        ("U.S. The end.", ["U.S.", "The end."]),
        ("Use e.g. apples.", ["Use e.g.", "apples."]),  # Punkt's English model does not know e.g.
        ("Pi is 3.14 today. Nice!", ["Pi is 3.14 today.", "Nice!"]),
        ("Wait... then go. Wait... The end.", ["Wait... then go.", "Wait...", "The end."]),
        ("Really?! Yes.", ["Really?!", "Yes."]),
        ("1. First item\n2. second item", ["1.", "First item\n2. second item"]),
        ("# Title\n\nNo end punctuation\n- bullet", ["# Title\n\nNo end punctuation\n- bullet"]),
        ("J. S. Bach wrote it. Plan B. The end.", ["J. S. Bach wrote it.", "Plan B.", "The end."]),
        ("Visit example.com today. Ok.", ["Visit example.com today.", "Ok."]),
        ("(It works.) Next one.", ["(It works.)", "Next one."]),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_count_sentences_of_blank_text_is_zero():
    assert count_sentences("") == 0
    assert count_sentences(" \n ") == 0


def test_word_tokens_follow_treebank_rules():
    assert word_tokens('I SAID "NO." OK?') == ["I", "SAID", "``", "NO", ".", "''", "OK", "?"]


def test_loose_variants_and_loose_rescues_a_first_line():
    assert response_variants("a\n*b*\nc", "strict") == ["a\n*b*\nc"]
    assert response_variants("a\n*b*\nc", "loose") == [
        "a\n*b*\nc",
        "*b*\nc",
        "a\n*b*",
        "*b*",
        "a\nb\nc",
        "b\nc",
        "a\nb",
        "b",
    ]
    row = {"key": 7, "prompt": "p", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}
    resp = {"p": 'Sure, here it is:\n"quoted"'}
    [strict] = evaluate_responses([row], resp, "strict")
    [loose] = evaluate_responses([row], resp, "loose")
    assert (strict.follow_all_instructions, loose.follow_all_instructions) == (False, True)
    with pytest.raises(ValueError):
        response_variants("x", "lenient")


def _rows():
    return [
        {
            "key": 1,
            "prompt": "p1",
            "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
            "kwargs": [{}, {}],
        },
        {"key": 2, "prompt": "p2", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 3, "prompt": "p3", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
    ]


def test_evaluate_summarize_and_missing_responses():
    responses = {"p1": '*\n"no commas"', "p2": "a, b"}
    strict = evaluate_responses(_rows(), responses, "strict")
    loose = evaluate_responses(_rows(), responses, "loose")
    assert [r.key for r in strict] == [1, 2]  # p3 has no response: skipped
    assert strict[0] == PromptResult(1, "p1", ["punctuation:no_comma", "startend:quotation"], [True, False], False)
    s = summarize(strict, loose)
    assert (s["prompt_level_strict"], s["instruction_level_strict"]) == (0.0, 1 / 3)
    assert (s["prompt_level_loose"], s["instruction_level_loose"]) == (0.5, 2 / 3)
    assert s["per_instruction"]["punctuation:no_comma"] == {"strict": 0.5, "loose": 0.5, "n": 2}
    assert s["per_instruction"]["startend:quotation"] == {"strict": 0.0, "loose": 1.0, "n": 1}
    with pytest.raises(ValueError):
        summarize(strict, loose[:1])


def test_write_outputs_and_score_file_round_trip(tmp_path):
    inputs = tmp_path / "input_data.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    resp = tmp_path / "responses.jsonl"
    resp.write_text(
        json.dumps({"prompt": "p1", "response": '"a"'})
        + "\n\n"
        + json.dumps({"prompt": "p2", "response": "a, b"})
        + "\n"
    )
    assert load_responses(resp) == {"p1": '"a"', "p2": "a, b"}
    assert len(load_inputs(inputs)) == 3
    summary = score_file(resp, inputs, tmp_path / "out")
    assert summary["missing"] == 1 and summary["prompt_level_strict"] == 0.5
    lines = (tmp_path / "out" / "ifeval_strict.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {
        "prompt",
        "response",
        "instruction_id_list",
        "follow_instruction_list",
        "follow_all_instructions",
    }
    assert first["follow_instruction_list"] == [True, True]
    assert (tmp_path / "out" / "ifeval_loose.jsonl").exists()
    on_disk = json.loads((tmp_path / "out" / "ifeval_summary.json").read_text())
    assert on_disk == summary
    paths = write_outputs(tmp_path / "o2", [], [], {"x": 1})
    assert paths["strict"].read_text() == ""
