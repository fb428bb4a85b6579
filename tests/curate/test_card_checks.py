"""The data card's curation sections as every card computes them (`instillm.curate.card`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instillm.curate.card import card_with_checks, near_dup_matcher
from instillm.data.card import card_html
from instillm.data.schema import from_prompt_completion
from instillm.errors import ConfigError

EVAL_TEXT = "the quick brown fox jumps over the lazy dog near the quiet river bank today"
POEM = "Write a poem about the sea and the sky and the stars tonight"


def rows():
    return [
        from_prompt_completion(POEM, "Waves roll in.", id="near-1"),
        from_prompt_completion(POEM + "!", "Waves roll in.", id="near-2"),
        from_prompt_completion(f"Please continue: {EVAL_TEXT}", "Sure.", id="leak-file"),
        from_prompt_completion("Name the capital of France.", "Paris", id="leak-set"),
        from_prompt_completion("Say hi.", "Hi!", id="ok"),
    ]


@pytest.fixture()
def eval_file(tmp_path: Path) -> Path:
    path = tmp_path / "evalset.jsonl"
    path.write_text(json.dumps({"prompt": EVAL_TEXT}) + "\n", encoding="utf-8")
    return path


def test_both_sections_with_eval_files_and_named_sets(eval_file):
    held = {"heldout": [from_prompt_completion("name the capital of  France.", "Paris", id="h1")]}
    card = card_with_checks(rows(), [eval_file], held)
    assert [c["ids"] for c in card["near_duplicates"]["clusters"]] == [["near-1", "near-2"]]
    ov = card["eval_overlap"]
    assert [(r["id"], r["eval_set"]) for r in ov["rows"]] == [("leak-file", "evalset.jsonl"), ("leak-set", "heldout")]
    assert ov["rows"][1]["match"] == "same prompt: name the capital of france."
    assert ov["eval_sets"] == [["heldout", 0], ["evalset.jsonl", 1]] and "more than 5 of the 5 rows" in ov["rule"]
    page = card_html(card)
    assert "Eval sets checked: heldout (0 text(s) for n-grams), evalset.jsonl (1 text(s) for n-grams)." in page
    assert "leaving out template text" in page and "no eval set given" not in page


def test_without_eval_sets_the_overlap_section_says_so():
    card = card_with_checks(rows())
    assert card["eval_overlap"] is None and card["near_duplicates"]["n_clusters"] == 1
    assert "no eval set given." in card_html(card)


def test_near_duplicates_on_instructions_and_a_bad_choice():
    same_question = [from_prompt_completion(POEM, "a"), from_prompt_completion(POEM, "something else entirely")]
    assert card_with_checks(same_question)["near_duplicates"]["n_clusters"] == 0  # conversations differ
    assert card_with_checks(same_question, on="instruction")["near_duplicates"]["n_clusters"] == 1
    with pytest.raises(ConfigError, match="conversation"):
        near_dup_matcher(on="response")
