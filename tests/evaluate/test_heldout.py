"""Scoring predictions per task and category."""

from __future__ import annotations

import pytest

from instillm.data.schema import Example, Message
from instillm.evaluate.heldout import evaluate_predictions


def ex(q: str, a: str, task: str, category: str = "c", **meta) -> Example:
    return Example(messages=(Message("user", q), Message("assistant", a)), task=task, category=category, meta=meta)


def test_per_task_and_category_means():
    examples = [ex("1", "Paris", "capital"), ex("2", "Rome", "capital"), ex("3", "the big red dog", "describe", "d")]
    preds = ["paris.", "Milan", "a big red dog"]
    res = evaluate_predictions(examples, preds)
    assert res.overall.n == 3
    assert res.per_task["capital"].exact_match == 0.5
    assert res.per_task["describe"].exact_match == 0.0
    assert res.per_task["describe"].rouge_l == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    assert res.per_category["c"].n == 2 and res.per_category["d"].n == 1
    # Failures come first among samples, so the report shows what went wrong.
    assert res.samples["capital"][0]["prediction"] == "Milan"
    d = res.to_dict()
    assert d["exact_match"] == pytest.approx(1 / 3) and "per_task" in d and "samples" in d


def test_checker_overrides_exact_match_for_correctness():
    examples = [ex("q", '{"a": 1}', "json")]
    res = evaluate_predictions(examples, ['{ "a":1 }'], checker=lambda e, p: p.replace(" ", "") == '{"a":1}')
    assert res.overall.exact_match == 0.0 and res.overall.correct == 1.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        evaluate_predictions([ex("q", "a", "t")], [])
