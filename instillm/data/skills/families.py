"""Task families of the built-in skills suite: procedural, seeded, no external data.

Every family is a small declarative `Family`: a few *cores* (imperative phrases that carry the
family's distinctive keywords, e.g. "reverse the word", "write the word backwards"), an input
generator over a seeded `random.Random`, a deterministic `solve(input) -> answer` and a checker.

The instruction phrasings of a family are its cores set in shared *frames* ("{Core}.",
"Can you {core}?", "Given {input}, {core}." …): 10 phrasings per family, each frame used by
almost every family and each core by 3–4 phrasings. A held-out phrasing is therefore a new
combination of a frame and a core that were both trained, which a tiny model trained from
scratch (no prior language knowledge) can still recognise by the keywords. Frames without
`{input}` are followed by the input as a separate block ("instruction\\n\\ninput").

Inputs are one line built from a small alphabet: made-up pronounceable words (CV syllables,
often a final consonant), small numbers, a few first names and objects. Answers are short and
depend on the input (no family has a frequent constant answer).
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from instillm.data.schema import Example
from instillm.data.skills import checkers

CATEGORIES = ("string", "list", "arithmetic", "format", "extract", "classify", "count", "compare", "compose", "cot")

BLOCK_FRAMES = (
    "{Core}.",
    "Please {core}.",
    "{Core}, please.",
    "Can you {core}?",
    "Task: {core}.",
    "I need you to {core}.",
    "Your job is to {core}.",
)
INLINE_FRAMES = (
    "{Core}: {input}",
    "Please {core}: {input}",
    "Input: {input}\nNow {core}.",
    "{Core} for this input: {input}",
    "Given {input}, {core}.",
)
FRAMES = BLOCK_FRAMES[:4] + INLINE_FRAMES[:2] + BLOCK_FRAMES[4:] + INLINE_FRAMES[2:]  # interleaved
PHRASINGS_PER_FAMILY = 10


def make_phrasings(name: str, cores: tuple[str, ...], n: int = PHRASINGS_PER_FAMILY) -> tuple[str, ...]:
    """Phrasing i = frame (offset+i) with core i mod len(cores); the offset varies by family."""
    offset = zlib.crc32(name.encode()) % len(FRAMES)
    out = []
    for i in range(n):
        core = cores[i % len(cores)]
        frame = FRAMES[(offset + i) % len(FRAMES)]
        out.append(frame.replace("{Core}", core[0].upper() + core[1:]).replace("{core}", core))
    return tuple(out)


def render(phrasing: str, inp: str) -> str:
    """User content: the input placed at `{input}`, or after the instruction as its own block."""
    if "{input}" in phrasing:
        return phrasing.replace("{input}", inp)
    return f"{phrasing}\n\n{inp}"


@dataclass(frozen=True)
class Family:
    """One task family; `check(prediction, example)` judges a model's answer to one example."""

    name: str
    category: str
    doc: str
    cores: tuple[str, ...]
    keywords: tuple[str, ...]  # regexes; every phrasing matches each one (case-insensitive)
    gen: Callable[[random.Random], str]
    solve: Callable[[str], str]
    match: Callable[[str, str], bool] = checkers.exact  # (prediction, reference) -> bool
    builds_on: tuple[str, ...] = ()  # trained families this one composes or resembles
    phrasings: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phrasings", make_phrasings(self.name, self.cores))

    def check(self, prediction: str, example: Example) -> bool:
        """Whether `prediction` answers `example` correctly (the family's notion of equal)."""
        return self.match(prediction, example.reference)


# --- input material ---------------------------------------------------------------------------

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
NAMES = ("Mia", "Tom", "Ana", "Leo", "Sam", "Ivy", "Ben", "Eva", "Noa", "Kai")
OBJECTS = ("apples", "pens", "books", "cards", "coins", "eggs", "shells", "stamps", "cups", "shoes")
KEYS = ("name", "pet", "city", "color", "food", "tool")
NUMBER_KEYS = ("age", "size")


def word(rng: random.Random, vowel_start: bool | None = None) -> str:
    """A made-up word of 3–7 letters: CV syllables, maybe a leading vowel and a final consonant.

    First and last letters are near uniform over the 19 letters used (5 vowels, 14 consonants).
    """
    if vowel_start is None:
        vowel_start = rng.random() < 5 / 19
    n = rng.choice((2, 2, 3))
    head = rng.choice(VOWELS) if vowel_start else ""
    body = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(n - vowel_start))
    tail = rng.choice(CONSONANTS) if rng.random() < 14 / 19 else ""
    return head + body + tail


def words(rng: random.Random, lo: int, hi: int) -> list[str]:
    """lo..hi distinct made-up words."""
    out: list[str] = []
    target = rng.randint(lo, hi)
    while len(out) < target:
        w = word(rng)
        if w not in out:
            out.append(w)
    return out


def numbers(rng: random.Random, lo: int, hi: int, top: int = 99) -> list[int]:
    """lo..hi distinct integers from 1..top."""
    return rng.sample(range(1, top + 1), rng.randint(lo, hi))


def _nums(s: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", s)]


def _join(ns: list[int]) -> str:
    return " ".join(map(str, ns))


def _items(s: str) -> list[str]:
    return s.split(", ")


def _drop_vowels(w: str) -> str:
    return "".join(c for c in w if c not in VOWELS)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- generators --------------------------------------------------------------------------------


def gen_word(rng: random.Random) -> str:
    return word(rng)


def gen_vowel_or_not(rng: random.Random) -> str:
    return word(rng, vowel_start=rng.random() < 0.5)


def gen_phrase(rng: random.Random) -> str:
    return " ".join(words(rng, 1, 3))


def gen_mixed_case(rng: random.Random) -> str:
    text = "".join(c.upper() if rng.random() < 0.5 else c for c in gen_phrase(rng))
    return text if text != text.lower() else text[0].upper() + text[1:]


def gen_occurrences(rng: random.Random) -> str:
    target, *others = words(rng, 3, 6)
    ws = [target] * rng.randint(1, 4) + [rng.choice(others) for _ in range(rng.randint(2, 4))]
    rng.shuffle(ws)
    return f"{' '.join(ws)} | word: {target}"


def gen_word_list(rng: random.Random) -> str:
    return ", ".join(words(rng, 3, 5))


def gen_short_list(rng: random.Random) -> str:
    return ", ".join(words(rng, 2, 4))


def gen_spaced_words(rng: random.Random) -> str:
    return " ".join(words(rng, 3, 5))


def gen_numbers(rng: random.Random) -> str:
    return _join(numbers(rng, 3, 7))


def gen_small_numbers(rng: random.Random) -> str:
    return _join(numbers(rng, 3, 6, top=50))


def gen_with_duplicates(rng: random.Random) -> str:
    distinct = numbers(rng, 3, 6, top=20)
    ns = distinct + [rng.choice(distinct) for _ in range(rng.randint(1, 3))]
    rng.shuffle(ns)
    return _join(ns)


def gen_even_mix(rng: random.Random) -> str:
    while True:
        ns = numbers(rng, 4, 7, top=50)
        if any(n % 2 == 0 for n in ns) and any(n % 2 for n in ns):
            return _join(ns)


def gen_first_n(rng: random.Random) -> str:
    n = rng.randint(1, 4)
    return f"n={n}; " + ", ".join(words(rng, n + 1, 6))


def gen_number(rng: random.Random) -> str:
    return str(rng.randint(1, 999))


def gen_signed(rng: random.Random) -> str:
    return str(rng.choice((-1, 1)) * rng.randint(1, 999))


def gen_two_numbers(rng: random.Random) -> str:
    a, b = rng.sample(range(1, 100), 2)
    return f"{a} or {b}"


def gen_two_words(rng: random.Random) -> str:
    while True:
        a, b = word(rng), word(rng)
        if len(a) != len(b):
            return f"{a} or {b}"


ADD_STORIES = (
    "{n} has {a} {o} and gets {b} more",
    "{n} has {a} {o} and finds {b} more",
    "{n} had {a} {o} and bought {b} more",
)
SUB_STORIES = ("{n} has {a} {o} and gives away {b}", "{n} has {a} {o} and loses {b}", "{n} had {a} {o} and used {b}")
MUL_STORIES = ("{n} has {a} bags with {b} {o} in each", "{n} buys {a} boxes of {b} {o}", "{n} has {a} rows of {b} {o}")
TWO_STEP_STORIES = (
    "{n} has {a} {o}, gets {b} more and then gives away {c}",
    "{n} has {a} {o}, finds {b} more and then loses {c}",
)


def _story(rng: random.Random, stories: tuple[str, ...], **nums: int) -> str:
    return rng.choice(stories).format(n=rng.choice(NAMES), o=rng.choice(OBJECTS), **nums)


def gen_add_story(rng: random.Random) -> str:
    return _story(rng, ADD_STORIES, a=rng.randint(1, 15), b=rng.randint(1, 15))


def gen_sub_story(rng: random.Random) -> str:
    left, b = rng.randint(1, 15), rng.randint(1, 15)  # a uniform answer, not skewed to small ones
    return _story(rng, SUB_STORIES, a=left + b, b=b)


def gen_mul_story(rng: random.Random) -> str:
    return _story(rng, MUL_STORIES, a=rng.randint(2, 9), b=rng.randint(2, 9))


def gen_two_step_story(rng: random.Random) -> str:
    a, b = rng.randint(1, 15), rng.randint(1, 15)
    return _story(rng, TWO_STEP_STORIES, a=a, b=b, c=rng.randint(1, min(a + b - 1, 12)))


def gen_pairs(rng: random.Random) -> str:
    keys = rng.sample(KEYS, rng.randint(2, 3))
    return ", ".join(f"{k}={word(rng)}" for k in keys)


def gen_record(rng: random.Random) -> str:
    keys = rng.sample(KEYS + NUMBER_KEYS, 3)
    fields = "; ".join(f"{k}: {rng.randint(1, 99) if k in NUMBER_KEYS else word(rng)}" for k in keys)
    return f"{fields} | field: {rng.choice(keys)}"


def gen_marked(rng: random.Random) -> str:
    ws = words(rng, 4, 6)
    ws.insert(rng.randint(0, len(ws) - 1), "#")
    return " ".join(ws)


def gen_text_with_number(rng: random.Random) -> str:
    ws = words(rng, 3, 5)
    ws.insert(rng.randint(0, len(ws)), str(rng.randint(1, 999)))
    return " ".join(ws)


# --- solvers -----------------------------------------------------------------------------------


def solve_record(s: str) -> str:
    record, key = s.split(" | field: ")
    return dict(f.split(": ") for f in record.split("; "))[key]


def solve_json(s: str) -> str:
    return json.dumps(dict(p.split("=") for p in _items(s)))


def solve_after_marker(s: str) -> str:
    toks = s.split()
    return toks[toks.index("#") + 1]


def solve_dedupe(s: str) -> str:
    return _join(list(dict.fromkeys(_nums(s))))


def solve_first_n(s: str) -> str:
    head, rest = s.split("; ", 1)
    return ", ".join(_items(rest)[: int(head[2:])])


def solve_occurrences(s: str) -> str:
    text, target = s.split(" | word: ")
    n = text.split().count(target)
    return f"{target} appears {n} {'time' if n == 1 else 'times'}"


def solve_larger(s: str) -> str:
    return str(max(_nums(s)))


def solve_longer(s: str) -> str:
    return max(s.split(" or "), key=len)


def solve_even_odd(s: str) -> str:
    return f"{s} is {'odd' if int(s) % 2 else 'even'}"


def solve_sign(s: str) -> str:
    return f"{s} is {'negative' if int(s) < 0 else 'positive'}"


def solve_vowel_start(s: str) -> str:
    return f"{s} starts with {'a vowel' if s[0] in VOWELS else 'a consonant'}"


def solve_two_step(s: str) -> str:
    a, b, c = _nums(s)
    return f"Step 1: {a} + {b} = {a + b}. Step 2: {a + b} - {c} = {a + b - c}. Answer: {a + b - c}"


def solve_cot_reverse_upper(s: str) -> str:
    r = s[::-1]
    return f"Step 1: reverse: {r}. Step 2: uppercase: {r.upper()}. Answer: {r.upper()}"


def solve_cot_range(s: str) -> str:
    hi, lo = max(_nums(s)), min(_nums(s))
    return f"Step 1: max {hi}. Step 2: min {lo}. Step 3: {hi} - {lo} = {hi - lo}. Answer: {hi - lo}"


def _product(s: str) -> str:
    a, b = _nums(s)
    return str(a * b)


def _difference(s: str) -> str:
    a, b = _nums(s)
    return str(a - b)


# --- the families ------------------------------------------------------------------------------


def _fam(
    name: str,
    category: str,
    doc: str,
    cores: tuple[str, ...],
    keywords: tuple[str, ...],
    gen: Callable[[random.Random], str],
    solve: Callable[[str], str],
    match: Callable[[str, str], bool] = checkers.exact,
    builds_on: tuple[str, ...] = (),
) -> Family:
    return Family(name, category, doc, cores, keywords, gen, solve, match, builds_on)


_ALL = (
    # string transforms
    _fam(
        "reverse_word",
        "string",
        "The word spelled backwards.",
        ("reverse the word", "write the word backwards", "spell the word in reverse"),
        ("revers|backwards",),
        gen_word,
        lambda s: s[::-1],
    ),
    _fam(
        "uppercase",
        "string",
        "The text in capital letters.",
        ("convert the text to uppercase", "write the text in capital letters", "make every letter uppercase"),
        ("upper|capital",),
        gen_phrase,
        str.upper,
    ),
    _fam(
        "lowercase",
        "string",
        "The text in small letters.",
        ("convert the text to lowercase", "write the text in lowercase letters", "make every letter lowercase"),
        ("lower",),
        gen_mixed_case,
        str.lower,
    ),
    _fam(
        "first_letter",
        "string",
        "The first letter of a word.",
        (
            "give the first letter of the word",
            "write only the first letter of the word",
            "tell me the first letter of the word",
        ),
        ("first letter",),
        gen_word,
        lambda s: s[0],
    ),
    _fam(
        "last_letter",
        "string",
        "The last letter of a word.",
        (
            "give the last letter of the word",
            "write only the last letter of the word",
            "tell me the last letter of the word",
        ),
        ("last letter",),
        gen_word,
        lambda s: s[-1],
    ),
    _fam(
        "drop_vowels",
        "string",
        "The word without its vowels.",
        ("remove the vowels from the word", "write the word without vowels", "delete every vowel in the word"),
        ("vowel",),
        gen_word,
        _drop_vowels,
    ),
    _fam(
        "double_letters",
        "string",
        "Every letter of the word written twice.",
        (
            "double every letter of the word",
            "write every letter of the word twice",
            "repeat each letter of the word twice",
        ),
        ("double|twice",),
        gen_word,
        lambda s: "".join(c + c for c in s),
    ),
    # lists and numbers
    _fam(
        "sort_numbers",
        "list",
        "The numbers sorted from smallest to largest.",
        (
            "sort the numbers from smallest to largest",
            "put the numbers in increasing order",
            "sort the numbers in ascending order",
        ),
        ("sort|order", "smallest to largest|ascending|increasing"),
        gen_numbers,
        lambda s: _join(sorted(_nums(s))),
        checkers.number_list,
    ),
    _fam(
        "sort_desc",
        "list",
        "The numbers sorted from largest to smallest.",
        (
            "sort the numbers from largest to smallest",
            "put the numbers in decreasing order",
            "sort the numbers in descending order",
        ),
        ("sort|order", "largest to smallest|descending|decreasing"),
        gen_numbers,
        lambda s: _join(sorted(_nums(s), reverse=True)),
        checkers.number_list,
        ("sort_numbers", "max_number"),
    ),
    _fam(
        "max_number",
        "list",
        "The largest number of a list.",
        ("give the largest number", "find the biggest number in the list", "return the maximum of the numbers"),
        ("largest|biggest|maximum",),
        gen_numbers,
        lambda s: str(max(_nums(s))),
    ),
    _fam(
        "min_number",
        "list",
        "The smallest number of a list.",
        ("give the smallest number", "find the lowest number in the list", "return the minimum of the numbers"),
        ("smallest|lowest|minimum",),
        gen_numbers,
        lambda s: str(min(_nums(s))),
    ),
    _fam(
        "reverse_list",
        "list",
        "The items of a list in reverse order.",
        ("reverse the order of the items", "write the items in reverse order", "list the items backwards"),
        ("revers|backwards", "items"),
        gen_word_list,
        lambda s: ", ".join(_items(s)[::-1]),
    ),
    _fam(
        "dedupe",
        "list",
        "The numbers with repeats removed, first occurrences kept in order.",
        (
            "remove the duplicate numbers",
            "drop repeated numbers and keep the first of each",
            "keep each number only once",
        ),
        ("duplicate|repeated|only once",),
        gen_with_duplicates,
        solve_dedupe,
        checkers.number_list,
    ),
    _fam(
        "first_n",
        "list",
        "The first n items of a list (n given in the input).",
        ("give the first n items", "keep only the first n items of the list", "return the first n items"),
        ("first n items",),
        gen_first_n,
        solve_first_n,
    ),
    _fam(
        "filter_even",
        "list",
        "The even numbers of a list, in order.",
        ("keep only the even numbers", "list just the even numbers", "filter the list down to the even numbers"),
        ("even numbers",),
        gen_even_mix,
        lambda s: _join([n for n in _nums(s) if n % 2 == 0]),
        checkers.number_list,
    ),
    # arithmetic word problems
    _fam(
        "word_add",
        "arithmetic",
        "Someone has a things and gets b more: a + b.",
        ("find the total", "work out how many there are altogether", "give the total number"),
        ("total|altogether",),
        gen_add_story,
        lambda s: str(sum(_nums(s))),
    ),
    _fam(
        "word_subtract",
        "arithmetic",
        "Someone has a things and gives away b: a - b.",
        ("find how many are left", "work out how many remain", "give the number left over"),
        ("left|remain",),
        gen_sub_story,
        _difference,
    ),
    _fam(
        "word_multiply",
        "arithmetic",
        "a groups of b things: a * b.",
        ("find how many there are in all", "work out how many things there are in all", "give the number in all"),
        ("in all",),
        gen_mul_story,
        _product,
    ),
    # formatting
    _fam(
        "json_object",
        "format",
        "key=value pairs as a JSON object.",
        ("turn the pairs into a json object", "write the pairs as json", "format the key value pairs as a json object"),
        ("json",),
        gen_pairs,
        solve_json,
        checkers.json_equal,
    ),
    _fam(
        "csv_line",
        "format",
        "Words joined into one CSV line.",
        ("write the words as a csv line", "join the words with commas", "format the words as one csv row"),
        ("csv|commas",),
        gen_spaced_words,
        lambda s: ",".join(s.split()),
        checkers.csv_fields,
    ),
    _fam(
        "bullet_list",
        "format",
        "Items as a markdown bullet list.",
        (
            "make a bullet list of the items",
            "write the items as bullet points",
            "format the items as a markdown bullet list",
        ),
        ("bullet",),
        gen_short_list,
        lambda s: "\n".join(f"- {x}" for x in _items(s)),
        checkers.bullets,
    ),
    _fam(
        "numbered_list",
        "format",
        "Items as a numbered list.",
        (
            "make a numbered list of the items",
            "write the items as a numbered list",
            "turn the items into a numbered list",
        ),
        ("numbered",),
        gen_short_list,
        lambda s: "\n".join(f"{i}. {x}" for i, x in enumerate(_items(s), 1)),
        checkers.numbered,
    ),
    # extraction from a context
    _fam(
        "field_value",
        "extract",
        "The value of the requested field of a `key: value; …` record.",
        (
            "give the value of the requested field",
            "extract the requested field from the record",
            "look up the requested field in the record",
        ),
        ("requested field",),
        gen_record,
        solve_record,
    ),
    _fam(
        "word_after_marker",
        "extract",
        "The word right after the # mark.",
        (
            "give the word after the # mark",
            "find the word that comes after the #",
            "write the word right after the # sign",
        ),
        ("after the #",),
        gen_marked,
        solve_after_marker,
    ),
    _fam(
        "extract_number",
        "extract",
        "The number hidden among words.",
        ("extract the number from the text", "find the number in the text", "pull out the number in the text"),
        ("number (from|in) the text",),
        gen_text_with_number,
        lambda s: str(_nums(s)[0]),
    ),
    # rule-based classification (the answer restates the input)
    _fam(
        "even_odd",
        "classify",
        "Whether a number is even or odd: `14 is even`.",
        (
            "say whether the number is even or odd",
            "tell me if the number is even or odd",
            "decide if the number is even or odd",
        ),
        ("even or odd",),
        gen_number,
        solve_even_odd,
    ),
    _fam(
        "vowel_start",
        "classify",
        "Whether a word starts with a vowel: `abel starts with a vowel`.",
        (
            "say whether the word starts with a vowel or a consonant",
            "tell me if the word begins with a vowel or a consonant",
            "check whether the word starts with a vowel or a consonant",
        ),
        ("vowel or a consonant",),
        gen_vowel_or_not,
        solve_vowel_start,
    ),
    _fam(
        "sign",
        "classify",
        "Whether a number is positive or negative: `-5 is negative`.",
        (
            "say whether the number is positive or negative",
            "tell me if the number is positive or negative",
            "decide if the number is positive or negative",
        ),
        ("positive or negative",),
        gen_signed,
        solve_sign,
    ),
    # counting
    _fam(
        "count_letters",
        "count",
        "How many letters a word has: `kamo has 4 letters`.",
        (
            "count the letters in the word",
            "give how many letters the word has",
            "tell me the number of letters in the word",
        ),
        ("count|how many|number of", "letters"),
        gen_word,
        lambda s: f"{s} has {_plural(len(s), 'letter')}",
    ),
    _fam(
        "count_vowels",
        "count",
        "How many vowels a word has: `kamo has 2 vowels`.",
        (
            "count the vowels in the word",
            "give how many vowels the word has",
            "tell me the number of vowels in the word",
        ),
        ("count|how many|number of", "vowels"),
        gen_word,
        lambda s: f"{s} has {_plural(sum(c in VOWELS for c in s), 'vowel')}",
        builds_on=("count_letters", "drop_vowels"),
    ),
    _fam(
        "count_occurrences",
        "count",
        "How many times a word occurs: `tilu appears 3 times`.",
        (
            "count how many times the word appears",
            "give the number of times the word appears",
            "tell me how many times the word occurs",
        ),
        ("times",),
        gen_occurrences,
        solve_occurrences,
    ),
    # comparison
    _fam(
        "larger_number",
        "compare",
        "The larger of two numbers.",
        ("pick the larger number", "say which number is bigger", "choose the larger of the two numbers"),
        ("larger|bigger",),
        gen_two_numbers,
        solve_larger,
    ),
    _fam(
        "longer_word",
        "compare",
        "The longer of two words.",
        ("pick the longer word", "say which word is longer", "choose the longer of the two words"),
        ("longer",),
        gen_two_words,
        solve_longer,
    ),
    # multi-step compositions
    _fam(
        "reverse_upper",
        "compose",
        "The word backwards, in capital letters.",
        (
            "reverse the word and make it uppercase",
            "write the word backwards in capital letters",
            "spell the word in reverse using uppercase letters",
        ),
        ("revers|backwards", "upper|capital"),
        gen_word,
        lambda s: s[::-1].upper(),
        builds_on=("reverse_word", "uppercase"),
    ),
    _fam(
        "dedupe_sort",
        "compose",
        "The distinct numbers, sorted from smallest to largest.",
        (
            "remove the duplicate numbers and sort the rest in increasing order",
            "keep each number only once and sort them from smallest to largest",
            "drop repeated numbers and put the rest in ascending order",
        ),
        ("duplicate|repeated|only once", "sort|order"),
        gen_with_duplicates,
        lambda s: _join(sorted(set(_nums(s)))),
        checkers.number_list,
        ("dedupe", "sort_numbers"),
    ),
    _fam(
        "acronym",
        "compose",
        "The first letter of each word, in capitals.",
        (
            "write the first letter of each word in capital letters",
            "give the first letter of each word in uppercase",
            "join the first letter of each word as uppercase letters",
        ),
        ("first letter", "upper|capital"),
        gen_spaced_words,
        lambda s: "".join(w[0] for w in s.split()).upper(),
        builds_on=("first_letter", "uppercase"),
    ),
    _fam(
        "drop_vowels_reverse",
        "compose",
        "The word without vowels, backwards.",
        (
            "remove the vowels and reverse the word",
            "write the word backwards without vowels",
            "delete every vowel and spell the word in reverse",
        ),
        ("vowel", "revers|backwards"),
        gen_word,
        lambda s: _drop_vowels(s)[::-1],
        builds_on=("drop_vowels", "reverse_word"),
    ),
    # chain of thought: rationale, then `Answer: X`
    _fam(
        "cot_word_problem",
        "cot",
        "Two-step word problem with its steps.",
        ("solve the problem step by step", "work it out step by step", "find how many are left, showing each step"),
        ("step",),
        gen_two_step_story,
        solve_two_step,
        checkers.answer_part,
        ("word_add", "word_subtract"),
    ),
    _fam(
        "cot_reverse_upper",
        "cot",
        "Reverse then uppercase, with the steps.",
        (
            "reverse the word and make it uppercase step by step",
            "write the word backwards in capital letters, showing each step",
            "spell the word in reverse using uppercase letters, step by step",
        ),
        ("step", "revers|backwards", "upper|capital"),
        gen_word,
        solve_cot_reverse_upper,
        checkers.answer_part,
        ("reverse_upper",),
    ),
    _fam(
        "cot_range",
        "cot",
        "Largest minus smallest, with the steps.",
        (
            "find the range of the numbers step by step",
            "subtract the smallest number from the largest, showing each step",
            "work out the largest minus the smallest step by step",
        ),
        ("step", "range|largest|smallest"),
        gen_small_numbers,
        solve_cot_range,
        checkers.answer_part,
        ("max_number", "min_number"),
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in _ALL}

# Held out by default (zero-shot): compositions or near relatives of trained families.
DEFAULT_HELDOUT_FAMILIES = ("sort_desc", "dedupe_sort", "acronym", "drop_vowels_reverse", "count_vowels")
