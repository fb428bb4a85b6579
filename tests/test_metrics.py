"""Metrics agree with the references: rouge-score for ROUGE-L, SuperNI for exact match."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from instillm.metrics import (
    exact_match,
    lcs_length,
    max_rouge_l,
    normalize_answer,
    rouge_l,
    rouge_tokenize,
)

REF = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
REF_STEM = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def dp_lcs(a, b) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=80), st.lists(st.integers(0, 6), max_size=80))
def test_bit_parallel_lcs_equals_dynamic_programming(a, b):
    assert lcs_length(a, b) == dp_lcs(a, b)


def _same(target: str, prediction: str) -> None:
    for ours_stem, ref in ((False, REF), (True, REF_STEM)):
        expected = ref.score(target, prediction)["rougeL"]
        got = rouge_l(target, prediction, use_stemmer=ours_stem)
        assert (got.precision, got.recall, got.fmeasure) == (expected.precision, expected.recall, expected.fmeasure)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120), st.text(max_size=120))
def test_rouge_l_equals_rouge_score_on_random_text(target, prediction):
    _same(target, prediction)


def test_rouge_l_equals_rouge_score_on_word_soup():
    rng = random.Random(0)
    words = "the cat sat on a mat running runs ran dog's dogs 42 4.2 Über-cool naïve e-mail".split()
    for _ in range(300):
        a = " ".join(rng.choices(words, k=rng.randint(0, 25)))
        b = " ".join(rng.choices(words, k=rng.randint(0, 25)))
        _same(a, b)


def test_rouge_l_equals_rouge_score_on_real_strings(shared_data):
    rows = [json.loads(x) for x in open(shared_data / "self_instruct" / "user_oriented_instructions.jsonl")]
    texts = [r["instruction"] for r in rows] + [i["output"] for r in rows for i in r["instances"]]
    rng = random.Random(1)
    for _ in range(400):
        _same(rng.choice(texts), rng.choice(texts))
    assert rouge_tokenize("Hello, World! 3.5") == ["hello", "world", "3", "5"]


def test_superni_normalization_and_exact_match():
    assert normalize_answer("  The  Answer: \n42! ") == "the answer 42"
    assert exact_match("the answer, 42", ["nope", "The Answer 42."]) == 1.0
    assert exact_match("answer 43", "answer 42") == 0.0


def test_max_rouge_l_over_references():
    assert max_rouge_l("a b c", ["x y z", "a b c"]) == 1.0
    assert max_rouge_l("a b c", []) == 0.0
