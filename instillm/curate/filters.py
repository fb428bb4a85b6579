"""Rule filters for instruction data: length, language, keyword blacklist, response basics.

Checks run in this order; the first that fails names the reject reason:

  empty_response                the final response has no letter or digit
  response_repeats_instruction  the normalized response equals the normalized instruction
  not_english                   language heuristic below (`language="en"`; None turns it off);
                                before the length rules, which count words by spaces
  response_too_short/_long      response words outside [min_response_words, max_response_words]
  instruction_too_short/_long   instruction words outside [min_words, max_words]; the defaults
                                4..150 are Self-Instruct's `len(inst.split()) <= 3 or > 150`
  starts_with_punctuation, starts_with_non_ascii, write_a_program
                                Self-Instruct's remaining instruction rules (`self_instruct_rules`)
  blacklisted_keyword           a blacklisted word or phrase in the instruction, matched like
                                Self-Instruct (`\\b(word)\\b`, case-insensitive); default: its list

"Instruction" is the user turns joined with a newline; words are `str.split()` pieces.

Language heuristic (English or not; no model), judged on the instruction only — a
"translate into French" task legitimately has a French response:
  1. letters = alphabetic characters. If at least 20 and more than 20% of them are non-ASCII,
     the text is not English (non-Latin scripts; heavily accented text such as Vietnamese).
  2. Otherwise, with at least 8 words (letter runs, URLs removed): count English function
     words ("the", "of", "is", ...) and function words of German, French, Spanish, Italian,
     Portuguese and Dutch that are not English words ("der", "und", "les", "est", "los", "che",
     "não", "het", ...). The text is not English when the foreign ones number at least 3 and
     outnumber the English ones. Code and lists have few function words of either kind, so they are kept.
  Shorter texts are kept: there is too little to judge. The rule misses Latin-script
  languages outside that list with plain ASCII spelling (e.g. Indonesian).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from instillm.curate.common import CurationSummary, curate_file, user_text
from instillm.data.schema import Example
from instillm.errors import ConfigError, RowError
from instillm.metrics import normalize_answer

SELF_INSTRUCT_BLACKLIST = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
)
DEFAULT_MIN_WORDS = 4
DEFAULT_MAX_WORDS = 150

NON_ASCII_LETTER_RATIO = 0.2
MIN_LETTERS = 20
MIN_WORDS_FOR_STOPWORDS = 8
MIN_FOREIGN_STOPWORDS = 3

EN_STOPWORDS = frozenset(
    """
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours out over own same she should so some
such than that the their theirs them themselves then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your
yours yourself yourselves
""".split()
)

# Function words of de/fr/es/it/pt/nl that are not English words themselves.
FOREIGN_STOPWORDS = (
    frozenset(
        """
der das dem des ein eine einer eines einem einen und ist nicht mit sich auf für fur von zu
im ich sie es wir ihr sind wie auch aber oder wenn dass noch nach bei aus um über uber nur schon
le la les un une des du et est sont avec dans sur pas qui que ne se au aux ce cette ces mais ou
où il elle ils nous vous leur être etre très tres
el los las una unos unas es para por del al lo como más mas pero su sus está esta este
muy también tambien qué cómo cuál puede ser
il lo gli della delle dei degli di da che non è sono una questo questa anche più
os um uma uns umas não nao com para por mais foi são sua seu muito também isso ela você
het een en ik je dat niet zijn op te voor er maar ook als bij wat nog naar dit
""".split()
    )
    - EN_STOPWORDS
)

_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (any script)
_URL = re.compile(r"\S*://\S*|www\.\S+")
_ALNUM = re.compile(r"[^\W_]")


def word_count(text: str) -> int:
    """Words as Self-Instruct counts them: `len(text.split())`."""
    return len(text.split())


def not_english(text: str) -> str | None:
    """Why `text` looks non-English (a short explanation), or None when it passes the heuristic."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= MIN_LETTERS:
        non_ascii = sum(1 for c in letters if not c.isascii())
        if non_ascii > NON_ASCII_LETTER_RATIO * len(letters):
            return f"{non_ascii / len(letters):.0%} of its letters are non-ASCII"
    words = [w.lower() for w in _WORD.findall(_URL.sub(" ", text))]
    if len(words) >= MIN_WORDS_FOR_STOPWORDS:
        en = sum(1 for w in words if w in EN_STOPWORDS)
        foreign = sum(1 for w in words if w in FOREIGN_STOPWORDS)
        if foreign >= MIN_FOREIGN_STOPWORDS and foreign > en:
            return f"{foreign} non-English function words against {en} English ones"
    return None


def blacklist_pattern(words: Sequence[str]) -> re.Pattern[str] | None:
    """One case-insensitive `\\b(w1|w2|...)\\b` pattern (longest first, so the reported word is the longest)."""
    words = [w for w in words if w]
    if not words:
        return None
    alts = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"\b({alts})\b", flags=re.IGNORECASE)


class RuleFilter:
    """The filters as one callable: `check(example)` returns a RowError for a rejected example, else None."""

    def __init__(
        self,
        min_words: int | None = DEFAULT_MIN_WORDS,
        max_words: int | None = DEFAULT_MAX_WORDS,
        language: str | None = "en",
        blacklist: Sequence[str] = SELF_INSTRUCT_BLACKLIST,
        min_response_words: int | None = 1,
        max_response_words: int | None = None,
        self_instruct_rules: bool = False,
    ) -> None:
        """Validate the settings (None turns a bound off)."""
        if language not in ("en", None):
            raise ConfigError(f"language must be 'en' or None (only an English heuristic exists), got {language!r}")
        if isinstance(blacklist, str):
            raise ConfigError("blacklist must be a list of words, not one string")
        for lo, hi, what in (
            (min_words, max_words, "words"),
            (min_response_words, max_response_words, "response words"),
        ):
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"min {what} ({lo}) is larger than max {what} ({hi})")
        self.min_words, self.max_words = min_words, max_words
        self.min_response_words, self.max_response_words = min_response_words, max_response_words
        self.language = language
        self.blacklist = blacklist_pattern(blacklist)
        self.self_instruct_rules = self_instruct_rules

    def check(self, ex: Example) -> RowError | None:
        """The first rule the example breaks, as RowError(reason, detail), or None."""
        inst, response = user_text(ex), ex.reference
        if not _ALNUM.search(response):
            return RowError("empty_response", "the response has no letter or digit")
        if normalize_answer(response) == normalize_answer(inst):
            return RowError("response_repeats_instruction", "the response equals the instruction (normalized)")
        if self.language == "en":
            why = not_english(inst)
            if why is not None:
                return RowError("not_english", f"instruction: {why}")
        err = _bounds(word_count(response), self.min_response_words, self.max_response_words, "response")
        if err is None:
            err = _bounds(word_count(inst), self.min_words, self.max_words, "instruction")
        if err is not None:
            return err
        if self.self_instruct_rules:
            first = inst.lstrip()[:1]
            if first and first in _PUNCT:
                return RowError("starts_with_punctuation", f"the instruction starts with {first!r}")
            if first and not first.isascii():
                return RowError("starts_with_non_ascii", f"the instruction starts with {first!r}")
            if inst.startswith("Write a program"):
                return RowError("write_a_program", "the instruction starts with 'Write a program'")
        if self.blacklist is not None:
            m = self.blacklist.search(inst)
            if m is not None:
                return RowError("blacklisted_keyword", f"the instruction contains {m.group(1)!r}")
        return None


_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _bounds(n: int, lo: int | None, hi: int | None, what: str) -> RowError | None:
    """RowError(<what>_too_short/_too_long) when n is outside [lo, hi]."""
    if lo is not None and n < lo:
        return RowError(f"{what}_too_short", f"{n} words < {lo}")
    if hi is not None and n > hi:
        return RowError(f"{what}_too_long", f"{n} words > {hi}")
    return None


def filter_file(
    inp: str | Path,
    out: str | Path,
    min_words: int | None = DEFAULT_MIN_WORDS,
    max_words: int | None = DEFAULT_MAX_WORDS,
    language: str | None = "en",
    blacklist: Sequence[str] = SELF_INSTRUCT_BLACKLIST,
    *,
    min_response_words: int | None = 1,
    max_response_words: int | None = None,
    self_instruct_rules: bool = False,
    progress: Callable[[int], None] | None = None,
) -> CurationSummary:
    """Copy canonical JSONL `inp` to `out` without the rows a rule rejects (see the module docstring)."""
    rules = RuleFilter(
        min_words, max_words, language, blacklist, min_response_words, max_response_words, self_instruct_rules
    )
    return curate_file(inp, out, [lambda ex, line: rules.check(ex)], progress)
