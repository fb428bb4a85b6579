"""The 25 verifiable-instruction checkers of IFEval, one function each.

Every checker takes the response text and the instruction's kwargs (as in IFEval's
``input_data.jsonl``) and returns whether the response follows the instruction. The semantics
follow Google's reference implementation (``instruction_following_eval/instructions.py``):
regular expressions, case handling and comparison relations are the same. Differences that
come from missing NLTK data are confined to `text` (sentence counting, word tokens for
capital-word counts) and documented there. Deliberate deviations, where the reference is random:
a missing kwarg is an error (the reference draws a random value), and `letter_frequency` counts
the requested character even when it is not an ASCII letter (the reference replaces ``#`` or
``!`` with a random letter). As in the reference, text whose language langdetect cannot decide
passes the language checks.
"""

from __future__ import annotations

import collections
import json
import re

from instillm.evaluate.ifeval import text

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _compare(value: int, relation: str, threshold: int) -> bool:
    """``value < threshold`` for "less than", ``value >= threshold`` for "at least"."""
    if relation == "less than":
        return value < threshold
    if relation == "at least":
        return value >= threshold
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


# --- change_case ---------------------------------------------------------------------------


def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """Count of all-uppercase word tokens compared with `capital_frequency`."""
    count = sum(1 for w in text.word_tokens(response) if w.isupper())
    return _compare(count, capital_relation, capital_frequency)


def english_capital(response: str) -> bool:
    """Entire response in upper case and detected as English (undecidable counts as a pass)."""
    return response.isupper() and text.detect_language(response) in (None, "en")


def english_lowercase(response: str) -> bool:
    """Entire response in lower case and detected as English (undecidable counts as a pass)."""
    return response.islower() and text.detect_language(response) in (None, "en")


# --- combination ---------------------------------------------------------------------------


def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """Response starts with the request to repeat (case-insensitive, outer spaces ignored)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def two_responses(response: str) -> bool:
    """Exactly two different non-empty responses separated by ``******``."""
    parts = response.split("******")
    kept = []
    for i, part in enumerate(parts):
        if part.strip():
            kept.append(part)
        elif 0 < i < len(parts) - 1:
            return False
    return len(kept) == 2 and kept[0].strip() != kept[1].strip()


# --- detectable_content --------------------------------------------------------------------


def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """At least `num_placeholders` square-bracket placeholders like ``[name]``."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def postscript(response: str, *, postscript_marker: str) -> bool:
    """A line (after optional spaces) starting with the postscript marker, case-insensitive."""
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + postscript_marker.lower() + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


# --- detectable_format ---------------------------------------------------------------------


def constrained_response(response: str) -> bool:
    """Contains one of "My answer is yes./no./maybe."."""
    value = response.strip()
    return any(option in value for option in CONSTRAINED_RESPONSES)


def json_format(response: str) -> bool:
    """Whole response (optionally in a ```json fence) parses as JSON."""
    value = response.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` sections marked ``<spliter> <number>``."""
    pattern = r"\s?" + section_spliter + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullet lines (``* item`` or ``- item``)."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty ``*highlighted*`` spans (``**bold**`` counts too)."""
    singles = re.findall(r"\*[^\n\*]*\*", response)
    doubles = re.findall(r"\*\*[^\n\*]*\*\*", response)
    count = sum(1 for h in singles if h.strip("*").strip())
    count += sum(1 for h in doubles if h.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


def title(response: str) -> bool:
    """Contains a non-empty title in double angular brackets, ``<<title>>``."""
    titles = re.findall(r"<<[^\n]+>>", response)
    return any(t.lstrip("<").rstrip(">").strip() for t in titles)


# --- keywords ------------------------------------------------------------------------------


def existence(response: str, *, keywords: list[str]) -> bool:
    """Every keyword (a regex, case-insensitive) occurs."""
    return all(re.search(k, response, flags=re.IGNORECASE) for k in keywords)


def forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    """No forbidden word occurs as a whole word (case-insensitive)."""
    return not any(re.search(r"\b" + w + r"\b", response, flags=re.IGNORECASE) for w in forbidden_words)


def frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """Occurrences of `keyword` (a regex, case-insensitive) compared with `frequency`."""
    count = len(re.findall(keyword.strip(), response, flags=re.IGNORECASE))
    return _compare(count, relation, frequency)


def letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """Occurrences of `letter` (case-insensitive, any character) compared with `let_frequency`."""
    count = collections.Counter(response.lower())[letter.strip().lower()]
    return _compare(count, let_relation, let_frequency)


# --- language ------------------------------------------------------------------------------


def response_language(response: str, *, language: str) -> bool:
    """Response detected as `language` (ISO 639-1); undecidable text passes, as upstream."""
    return text.detect_language(response) in (None, language)


# --- length_constraints --------------------------------------------------------------------


def nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """`num_paragraphs` paragraphs (split on blank lines) and the nth starts with `first_word`."""
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    return count == num_paragraphs and _first_word(paragraph) == first_word.strip().lower()


def _first_word(paragraph: str) -> str:
    """First whitespace token, leading quotes removed, cut at the first punctuation mark."""
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    return re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()


def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by ``***`` (no empty inner paragraph)."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if 0 < i < len(paragraphs) - 1:
                return False
            count -= 1
    return count == num_paragraphs


def number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    """Sentence count compared with `num_sentences`."""
    return _compare(text.count_sentences(response), relation, num_sentences)


def number_words(response: str, *, num_words: int, relation: str) -> bool:
    """Word count (``\\w+`` tokens) compared with `num_words`."""
    return _compare(text.count_words(response), relation, num_words)


# --- punctuation / startend ----------------------------------------------------------------


def no_comma(response: str) -> bool:
    """No comma anywhere."""
    return "," not in response


def end_checker(response: str, *, end_phrase: str) -> bool:
    """Ends with `end_phrase` (case-insensitive; outer spaces and double quotes ignored)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    """Whole response wrapped in double quotation marks."""
    value = response.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'
