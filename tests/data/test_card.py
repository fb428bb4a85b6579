"""Data card: sections, the verb-object heuristic, near-duplicate clusters, eval overlap, the HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instillm.curate.common import conversation_parts
from instillm.curate.decontaminate import EvalIndex
from instillm.curate.dedup import MinHashDedup
from instillm.data.card import (
    card_html,
    card_sections_html,
    data_card,
    detect_language,
    leading_verb_object,
    read_card_examples,
    singular,
    verb_breakdown,
    write_card_html,
)
from instillm.data.schema import Example, Message
from instillm.errors import DataError

EVAL_TEXT = "the quick brown fox jumps over the lazy dog near the quiet river bank today"


def ex(id: str, q: str, r: str, **fields) -> Example:
    return Example(messages=(Message("user", q), Message("assistant", r)), id=id, **fields)


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("Write a short poem about the sea.", ("write", "poem")),
        ("Please write a haiku.", ("write", "haiku")),
        ("Can you give me three tips for staying healthy?", ("give", "tip")),
        ("Given the following sentence, classify its sentiment.", ("classify", "sentiment")),
        ("1. Summarize the articles below", ("summarize", "article")),
        ("Help me write an email to my boss", ("write", "email")),
        ("Generate 5 questions about boxes", ("generate", "question")),
        ("Categorize these species", ("categorize", "species")),
        ("Translate: bonjour", ("translate", None)),
        ("Rewrite", ("rewrite", None)),
        ("Paraphrase the following stories\nThe fox ran.", ("paraphrase", "story")),
        ("What is the capital of France?", None),
        ("The sky is blue. Explain why.", None),
        ("", None),
    ],
)
def test_leading_verb_object(instruction, expected):
    assert leading_verb_object(instruction) == expected


def test_singular():
    assert [singular(w) for w in ("stories", "boxes", "classes", "tips", "analysis", "news", "bus", "data")] == [
        "story",
        "box",
        "class",
        "tip",
        "analysis",
        "news",
        "bus",
        "data",
    ]


def test_verb_breakdown_counts_verbs_and_objects():
    texts = ["Write a poem.", "Write a poem about cats.", "Write a story.", "Give me a list.", "What is 2+2?"]
    out = verb_breakdown(texts, top=5, objects=4)
    assert out["n_with_verb"] == 4 and out["share_with_verb"] == pytest.approx(0.8) and out["n_distinct"] == 2
    assert out["top"] == [
        {"verb": "write", "count": 3, "objects": [["poem", 2], ["story", 1]]},
        {"verb": "give", "count": 1, "objects": [["list", 1]]},
    ]


def test_language_is_deterministic():
    text = "Der schnelle braune Fuchs springt über den faulen Hund und läuft dann nach Hause."
    assert detect_language(text) == "de" and detect_language(text) == "de"
    assert detect_language("1234 !!") == "unknown"


def rows() -> list[Example]:
    poem = "Write a poem about the sea and the sky and the stars tonight"
    return [
        ex("p1", poem, "Waves roll in under the moon.", source="alpaca", task="poem", category="creative"),
        ex("p2", poem + "!", "Waves roll in under the moon.", source="alpaca", task="poem", category="creative"),
        ex("q1", "Classify the following review as positive or negative: great food", "positive", source="self"),
        ex("c1", f"Please continue: {EVAL_TEXT}", "and then it rained.", source="self", task="continue"),
        ex("de", "Wie spät ist es jetzt in Berlin? Sag es mir bitte genau.", "Es ist zehn Uhr.", source="self"),
    ]


def matchers(tmp_path: Path):
    eval_file = tmp_path / "evalset.jsonl"
    eval_file.write_text(json.dumps({"prompt": EVAL_TEXT}) + "\n", encoding="utf-8")
    index = EvalIndex()
    index.add_file(eval_file)
    mh = MinHashDedup(0.8)
    return (lambda e, i: mh.offer("\n".join(conversation_parts(e)), i)), index.find_example


def test_card_sections(tmp_path: Path):
    near_dup, overlap = matchers(tmp_path)
    card = data_card(rows(), near_dup=near_dup, eval_overlap=overlap)
    assert card["n_examples"] == 5
    assert card["composition"]["source"] == [["self", 3], ["alpaca", 2]]
    assert card["composition"]["category"] == [["(none)", 3], ["creative", 2]]
    assert card["lengths"]["unit"] == "words" and card["lengths"]["response"]["max"] == 6
    assert sum(card["lengths"]["prompt"]["histogram"]["counts"]) == 5
    assert dict((k, c) for k, _, c in card["language"]["share"]) == {"en": 4, "de": 1}
    assert [v["verb"] for v in card["verbs"]["top"]] == ["write", "classify", "continue"]
    nd = card["near_duplicates"]
    assert nd["n_clusters"] == 1 and nd["clusters"][0]["ids"] == ["p1", "p2"] and nd["clusters"][0]["rows"] == [1, 2]
    ov = card["eval_overlap"]
    assert ov["n_rows"] == 1 and ov["by_set"] == {"evalset.jsonl": 1}
    assert ov["rows"][0]["id"] == "c1" and ov["rows"][0]["row"] == 4
    json.dumps(card)


def test_card_without_matchers_and_language_sample():
    card = data_card(rows(), language_sample=2)
    assert card["near_duplicates"] is None and card["eval_overlap"] is None
    assert card["language"]["n_detected"] == 2


def test_html_is_self_contained(tmp_path: Path):
    near_dup, overlap = matchers(tmp_path)
    card = data_card(rows(), near_dup=near_dup, eval_overlap=overlap)
    out = write_card_html(card, tmp_path / "sub" / "card.html", title="Data card: <x>")
    html = out.read_text(encoding="utf-8")
    for section in (
        "Composition",
        "Prompt and response lengths",
        "Languages",
        "Leading verbs and their objects",
        "Near-duplicate clusters",
        "Overlap with eval sets",
    ):
        assert f"<h2>{section}</h2>" in html
    assert html.count('src="data:image/png;base64,') == 4
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "Data card: &lt;x&gt;" in html and "p1 (row 1), p2 (row 2)" in html and "evalset.jsonl" in html
    assert not list(out.parent.glob(".*.tmp"))


def test_sections_html_embeds_only_what_was_computed():
    html = card_sections_html(data_card(rows()), level=3, computed_only=True)
    assert html.startswith("<section><h3>Composition</h3>") and "<html" not in html and "<h2>" not in html
    assert html.count('src="data:image/png;base64,') == 4 and "Near-duplicate clusters" not in html
    assert "Near-duplicate clusters" in card_sections_html(data_card(rows()))  # by default: all, "not computed"


def test_html_of_an_empty_card():
    html = card_html(data_card([]))
    assert "0 row(s)" in html and "not computed" in html


def test_read_card_examples(tmp_path: Path):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r", "train": False}]
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "off", "messages": msgs}) + "\n", encoding="utf-8")
    (only,) = read_card_examples(data)
    assert only.id == "off" and only.reference == "r"
    data.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match="d.jsonl:1: malformed_json"):
        read_card_examples(data)
