"""Inspector statistics and highlighting."""

from __future__ import annotations

import pytest

from instillm.data.inspect import JSON_KEYS, highlight, inspect_examples
from instillm.data.render import RenderConfig, Renderer
from instillm.data.schema import Example, Message


def ex(q: str, a: str) -> Example:
    return Example(messages=(Message("user", q), Message("assistant", a)))


def test_stats_count_tokens_truncation_and_drops(tiny_tokenizer):
    examples = [ex("short", "ok"), ex("a bit longer question here", "and an answer"), ex("x " * 200, "y")]
    renderer = Renderer(tiny_tokenizer, RenderConfig(template="chatml", max_length=64))
    stats, rendered = inspect_examples(examples, renderer)
    lengths = [len(r) for r in rendered]
    assert stats.n_examples == 3 and stats.dropped == 1 and stats.dropped_by_reason == {"too_long": 1}
    assert stats.n_tokens == sum(lengths) and stats.length_max == max(lengths)
    trained = sum(r.n_trained for r in rendered)
    assert stats.trained_token_fraction == pytest.approx(trained / sum(lengths))
    # Both kept examples fit in one 64-token bin.
    assert stats.packing_efficiency == pytest.approx(sum(lengths) / 64)
    assert set(stats.to_json()) == set(JSON_KEYS)
    assert sum(stats.histogram["counts"]) == 2


def test_truncated_count(tiny_tokenizer):
    renderer = Renderer(tiny_tokenizer, RenderConfig(template="chatml", max_length=24, truncation="truncate-prompt"))
    stats, _ = inspect_examples([ex("word " * 30, "fine"), ex("q", "a")], renderer)
    assert stats.truncated == 1 and stats.dropped == 0


def test_highlight_marks_trained_text(tiny_tokenizer):
    renderer = Renderer(tiny_tokenizer, RenderConfig(template="chatml"))
    r = renderer.render(ex("question", "the answer"))
    text = highlight(r, tiny_tokenizer)
    trained = "".join(text.plain[s.start : s.end] for s in text.spans if s.style == "bold green")
    assert trained == "the answer<|im_end|>"
    assert "question" in text.plain


def test_no_examples_is_an_error(tiny_tokenizer):
    from instillm.errors import DataError

    with pytest.raises(DataError, match="no examples"):
        inspect_examples([], Renderer(tiny_tokenizer, RenderConfig(template="chatml")))
