"""The eval index's boilerplate rule (the data card's eval overlap): template text shared by many training rows
is not leakage; an eval example copied into the training data, exactly or nearly, still is."""

from __future__ import annotations

import json
import random

import pytest

from instillm.curate.decontaminate import SAME_PROMPT, Boilerplate, EvalIndex, decontaminate_file, rare_runs
from instillm.data.importer import write_examples
from instillm.data.schema import Example, from_prompt_completion
from instillm.errors import ConfigError

# Like the quickstart's skills suite: train and eval rows rendered by the same phrasings, inputs disjoint. Two
# phrasings are 13 tokens or longer on their own; others join the template to a name within 13 tokens.
PHRASINGS = [
    ("I need you to tell me if the number is positive or negative.\n\n{x}", "number"),
    ("I need you to work out how many there are altogether in the following.\n\n{x}", "story"),
    ("Work out how many there are altogether for this input: {x}", "story"),
    ("Can you work out how many things there are in all? {x}", "story"),
    ("Input: {x}\nNow find the total.", "story"),
    ("Please pull out the number in the text below and give only that number.\n\n{x}", "words"),
]
NAMES = ["Ben", "Noa", "Eva", "Leo", "Kai", "Mia", "Sam", "Ana"]
NOUNS = ["books", "stamps", "shells", "coins", "cups", "pens"]
PLACES = ["garden", "attic", "kitchen", "library", "garage"]


def made_up(rng: random.Random) -> str:
    return "".join(rng.choice("bdgkmprstv") + rng.choice("aeiou") for _ in range(rng.randint(2, 3)))


INPUTS = {
    "number": lambda rng: str(rng.randint(-999, 999)),
    "story": lambda rng: (
        f"{rng.choice(NAMES)} has {rng.randint(2, 40)} {rng.choice(NOUNS)} in the "
        f"{rng.choice(PLACES)} and finds {rng.randint(2, 40)} more"
    ),
    "words": lambda rng: " ".join([*(made_up(rng) for _ in range(6)), str(rng.randint(100, 999)), made_up(rng)]),
}


def templated(n: int, seed: int, split: str) -> list[Example]:
    """`n` rows: each phrasing in turn over fresh inputs."""
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < n:
        i = len(rows) % len(PHRASINGS)
        phrasing, kind = PHRASINGS[i]
        x = INPUTS[kind](rng)
        if x in seen:
            continue
        seen.add(x)
        rows.append(from_prompt_completion(phrasing.format(x=x), "42", id=f"{split}-{len(rows)}", task=kind))
    return rows


@pytest.fixture(scope="module")
def suite() -> dict[str, list[Example]]:
    rows = templated(442, 0, "row")  # inputs never repeat: the first 42 are the eval set, disjoint from train
    return {"train": rows[42:], "eval": rows[:42]}


def index_on(train: list[Example], evals: list[Example], boilerplate: Boilerplate | None) -> EvalIndex:
    index = EvalIndex(boilerplate=boilerplate)
    index.add_examples("heldout", evals)
    if boilerplate is not None:
        index.fit_examples(train)
    return index


def flagged(index: EvalIndex, rows: list[Example]) -> list[str]:
    return [ex.id for ex in rows if index.find_example(ex) is not None]


def test_plain_ngrams_flag_the_templated_rows(suite):
    """The problem: every row of a 13-token phrasing (and more) shares a 13-gram with the eval set."""
    hits = flagged(index_on(suite["train"], suite["eval"], None), suite["train"])
    assert len(hits) > len(suite["train"]) // 3


def test_template_text_shared_with_the_eval_set_is_not_overlap(suite):
    index = index_on(suite["train"], suite["eval"], Boilerplate())
    assert flagged(index, suite["train"]) == []
    assert index.fit_limit == 5 and index.n_common > 0  # max(5, 1% of 400 rows)


def copy_of(ex: Example, text: str, id: str) -> Example:
    return from_prompt_completion(text, ex.messages[-1].content, id=id)


def test_an_eval_example_copied_into_training_is_found_exactly_and_nearly(suite):
    evals = suite["eval"]
    word, number = evals[5], evals[0]  # made-up words (a distinctive input) and a signed number (a short one)
    planted = [
        copy_of(word, word.messages[0].content, "exact"),
        copy_of(word, word.messages[0].content.upper().replace(".", "!") + " Thanks", "near"),
        copy_of(number, number.messages[0].content, "exact-short"),
        copy_of(number, "  " + number.messages[0].content.upper() + "\n", "case-and-space"),
    ]
    train = suite["train"] + planted
    index = index_on(train, evals, Boilerplate())
    assert flagged(index, train) == ["exact", "near", "exact-short", "case-and-space"]
    hits = [index.find_example(p) for p in planted]
    assert hits[0] == ("heldout", SAME_PROMPT + " ".join(word.messages[0].content.lower().split()))
    assert hits[1] is not None and not hits[1][1].startswith(SAME_PROMPT)  # through its own (rare) words
    assert "number" not in hits[1][1].split()  # the template is cut out of the match
    assert all(h is not None and h[1].startswith(SAME_PROMPT) for h in hits[2:])


def test_the_same_prompt_keeps_punctuation(suite):
    """ "-459" and "459" are different questions (rouge tokens would call them equal)."""
    number = suite["eval"][0]
    text = number.messages[0].content
    flipped = text[:-4] + text[-4:].replace("-", "") if "-" in text[-4:] else text + "0"
    index = index_on(suite["train"], suite["eval"], Boilerplate())
    assert index.find_example(copy_of(number, flipped, "other-number")) is None


def test_an_eval_example_copied_into_many_rows_is_still_found_by_its_prompt(suite):
    word = suite["eval"][5]
    train = suite["train"] + [copy_of(word, word.messages[0].content, f"copy-{i}") for i in range(12)]
    index = index_on(train, suite["eval"], Boilerplate())
    assert len(flagged(index, train)) == 12


def test_the_limit_is_the_larger_of_min_rows_and_the_share():
    rule = Boilerplate()
    assert (rule.limit(10), rule.limit(499), rule.limit(500), rule.limit(26_837)) == (5, 5, 5, 268)
    assert Boilerplate(min_rows=0, share=0.5).limit(9) == 4
    with pytest.raises(ConfigError, match="share"):
        Boilerplate(share=2)
    with pytest.raises(ConfigError, match="gram"):
        Boilerplate(gram=0)


def test_rare_runs_cut_out_the_common_windows():
    toks = "a b c d e f g".split()
    assert rare_runs(toks, {("b", "c")}, 2) == [["a"], ["d", "e", "f", "g"]]
    assert rare_runs(toks, {("a", "b"), ("f", "g")}, 2) == [["c", "d", "e"]]
    assert rare_runs(toks, set(), 2) == [toks]


def test_it_must_be_fit_before_it_finds(suite):
    index = EvalIndex(boilerplate=Boilerplate())
    index.add_examples("heldout", suite["eval"])
    with pytest.raises(ConfigError, match="fit"):
        index.find_example(suite["train"][0])
    with pytest.raises(ConfigError, match="no boilerplate rule"):
        EvalIndex().fit([])


def test_an_eval_file_of_short_prompts_counts_by_its_prompts(tmp_path):
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"prompt": "What is 2 + 2?"}) + "\n", encoding="utf-8")
    index = EvalIndex(boilerplate=Boilerplate())
    index.add_file(short)
    index.fit([])
    assert index.find_example(from_prompt_completion("what is 2 + 2?", "4")) == (
        "short.jsonl",
        SAME_PROMPT + "what is 2 + 2?",
    )
    with pytest.raises(Exception, match="no text of 8 tokens"):
        EvalIndex().add_file(short)  # without the rule, as `data decontaminate` has always said


def test_data_decontaminate_keeps_plain_ngrams(suite, tmp_path):
    """Off by default: `data decontaminate` still drops every row sharing a 13-gram, templates included."""
    evals = tmp_path / "heldout.jsonl"
    write_examples(suite["eval"], evals)
    inp = write_examples(suite["train"], tmp_path / "train.jsonl")
    s = decontaminate_file(inp, tmp_path / "clean.jsonl", [evals])
    assert s.n_rejected == len(flagged(index_on(suite["train"], suite["eval"], None), suite["train"])) > 0
