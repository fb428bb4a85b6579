"""Instruction id → checker, for the 25 IFEval instruction ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from instillm.evaluate.ifeval import instructions as ins

Checker = Callable[..., bool]

INSTRUCTIONS: dict[str, Checker] = {
    "change_case:capital_word_frequency": ins.capital_word_frequency,
    "change_case:english_capital": ins.english_capital,
    "change_case:english_lowercase": ins.english_lowercase,
    "combination:repeat_prompt": ins.repeat_prompt,
    "combination:two_responses": ins.two_responses,
    "detectable_content:number_placeholders": ins.number_placeholders,
    "detectable_content:postscript": ins.postscript,
    "detectable_format:constrained_response": ins.constrained_response,
    "detectable_format:json_format": ins.json_format,
    "detectable_format:multiple_sections": ins.multiple_sections,
    "detectable_format:number_bullet_lists": ins.number_bullet_lists,
    "detectable_format:number_highlighted_sections": ins.number_highlighted_sections,
    "detectable_format:title": ins.title,
    "keywords:existence": ins.existence,
    "keywords:forbidden_words": ins.forbidden_words,
    "keywords:frequency": ins.frequency,
    "keywords:letter_frequency": ins.letter_frequency,
    "language:response_language": ins.response_language,
    "length_constraints:nth_paragraph_first_word": ins.nth_paragraph_first_word,
    "length_constraints:number_paragraphs": ins.number_paragraphs,
    "length_constraints:number_sentences": ins.number_sentences,
    "length_constraints:number_words": ins.number_words,
    "punctuation:no_comma": ins.no_comma,
    "startend:end_checker": ins.end_checker,
    "startend:quotation": ins.quotation,
}


def get_checker(instruction_id: str) -> Checker:
    """The checker for `instruction_id`; KeyError naming the known ids when unknown."""
    try:
        return INSTRUCTIONS[instruction_id]
    except KeyError:
        raise KeyError(f"unknown IFEval instruction id {instruction_id!r}") from None


def check(instruction_id: str, response: str, kwargs: dict[str, Any] | None = None) -> bool:
    """Run one instruction's checker; None-valued kwargs are dropped (as in the input file)."""
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    return get_checker(instruction_id)(response, **args)
