"""Rendering and loss masks: trained tokens are exactly assistant contents plus the end token."""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instillm.data.render import IGNORE_INDEX, RenderConfig, Renderer, save_template
from instillm.data.schema import Example, Message
from instillm.data.templates import BUILTIN_TEMPLATES, CHATML
from instillm.errors import ConfigError, DataError, RenderError, TemplateError

END = {"chatml": "<|im_end|>", "alpaca": "</s>", "plain": "</s>"}


def conv(*turns: str, system: str | None = None, train: list[bool] | None = None, **kw) -> Example:
    """Alternating user/assistant turns; `train` gives per-assistant-turn flags."""
    msgs = [Message("system", system)] if system else []
    flags = iter(train or [])
    for i, t in enumerate(turns):
        role = "user" if i % 2 == 0 else "assistant"
        msgs.append(Message(role, t, next(flags, None) if role == "assistant" else None))
    return Example(messages=tuple(msgs), **kw)


def trained_runs(tok, ids: list[int], labels: list[int]) -> list[str]:
    """Decode each contiguous run of trained tokens."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i, "labels must equal input ids where trained"
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


CASES = [
    conv("What is 2+2?", "4"),
    conv("Hi", "Hello there!", "How are you?", "Fine, thanks.\nAnd you?"),
    conv("Translate 'chat'", "cat", system="You are a translator."),
    conv("a", " leading space", "b", "trailing space ", "c", "émoji 🎉 ünïcode", system="sys"),
]


@pytest.mark.parametrize("template", ["chatml", "alpaca", "plain"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_trained_tokens_are_assistant_contents_plus_end_token(tiny_tokenizer, template, case):
    ex = CASES[case]
    r = Renderer(tiny_tokenizer, RenderConfig(template=template)).render(ex)
    expected = [m.content + END[template] for m in ex.messages if m.role == "assistant"]
    assert trained_runs(tiny_tokenizer, r.input_ids, r.labels) == expected
    assert len(r.input_ids) == len(r.labels)


def test_untrained_assistant_turns_are_masked(tiny_tokenizer):
    ex = conv("q1", "a1 (bad)", "q2", "a2", train=[False, True])
    r = Renderer(tiny_tokenizer, RenderConfig(template="chatml")).render(ex)
    assert trained_runs(tiny_tokenizer, r.input_ids, r.labels) == ["a2<|im_end|>"]


def test_mask_equals_generation_markers(tiny_tokenizer):
    """Our turn-by-turn masks agree with HF's `{% generation %}` assistant mask on chatml."""
    ex = CASES[1]
    r = Renderer(tiny_tokenizer, RenderConfig(template="chatml")).render(ex)
    hf = tiny_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in ex.messages],
        chat_template=CHATML,
        return_assistant_tokens_mask=True,
        return_dict=True,
        tokenize=True,
    )
    assert hf["input_ids"] == r.input_ids
    assert hf["assistant_masks"] == [int(x != IGNORE_INDEX) for x in r.labels]


@pytest.mark.parametrize("template", ["chatml", "alpaca", "plain"])
def test_inference_prompt_is_a_prefix_of_training_ids(tiny_tokenizer, template):
    """What generation is given equals what training saw before the last response."""
    renderer = Renderer(tiny_tokenizer, RenderConfig(template=template))
    for ex in CASES:
        r = renderer.render(ex)
        prompt_ids = tiny_tokenizer(renderer.example_prompt_text(ex), add_special_tokens=False)["input_ids"]
        assert r.input_ids[: len(prompt_ids)] == prompt_ids
        assert r.labels[len(prompt_ids)] != IGNORE_INDEX
        assert all(x == IGNORE_INDEX for x in r.labels[len(prompt_ids) - 1 : len(prompt_ids)])


def test_alpaca_with_and_without_input(tiny_tokenizer):
    renderer = Renderer(tiny_tokenizer, RenderConfig(template="alpaca"))
    with_input = Example(
        messages=(Message("user", "Sum the numbers.\n\n1 2 3"), Message("assistant", "6")),
        meta={"instruction": "Sum the numbers.", "input": "1 2 3"},
    )
    text, _ = renderer.render_text(with_input)
    assert "paired with an input" in text
    assert "### Instruction:\nSum the numbers.\n\n### Input:\n1 2 3\n\n### Response:\n6</s>" in text
    text, _ = renderer.render_text(conv("Say hi.", "hi"))
    assert "### Input:" not in text and "paired with an input" not in text
    assert text.endswith("### Instruction:\nSay hi.\n\n### Response:\nhi</s>\n\n")


def test_auto_uses_tokenizer_template(tiny_tokenizer):
    renderer = Renderer(tiny_tokenizer, RenderConfig(template="auto"))
    assert renderer.template == tiny_tokenizer.chat_template


def test_unknown_template_and_bad_config_are_config_errors(tiny_tokenizer):
    with pytest.raises(ConfigError, match="template"):
        Renderer(tiny_tokenizer, RenderConfig(template="nope"))
    with pytest.raises(ConfigError, match="truncation.*max_length"):
        RenderConfig(truncation="cut", max_length=0)


def _with_template(tok, template: str):
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    return tok


def test_double_bos_is_an_error(tiny_tokenizer):
    tok = _with_template(tiny_tokenizer, "{{ bos_token }}" + CHATML)
    with pytest.raises(TemplateError, match="double BOS"):
        Renderer(tok, RenderConfig(template="tokenizer")).render(CASES[0])


def test_missing_end_token_is_an_error(tiny_tokenizer):
    no_end = CHATML.replace(
        "{{ message['content'] }}<|im_end|>{% endgeneration %}", "{{ message['content'] }}{% endgeneration %}"
    )
    tok = _with_template(tiny_tokenizer, no_end)
    with pytest.raises(TemplateError, match="never learn to stop"):
        Renderer(tok, RenderConfig(template="tokenizer")).render(CASES[0])


def test_prefix_mismatch_is_an_error(tiny_tokenizer):
    # Marks the last message differently, as templates that rewrite history do.
    tmpl = CHATML.replace(
        "{{ message['content'] }}<|im_end|>{% endgeneration %}",
        "{{ message['content'] }}{% if loop.last %} [final]{% endif %}<|im_end|>{% endgeneration %}",
    )
    tok = _with_template(tiny_tokenizer, tmpl)
    with pytest.raises(TemplateError, match="prefix-consistent"):
        Renderer(tok, RenderConfig(template="tokenizer")).render(CASES[1])


def test_truncation_drop_and_error(tiny_tokenizer):
    ex = conv("word " * 50, "answer")
    with pytest.raises(RenderError) as e:
        Renderer(tiny_tokenizer, RenderConfig(template="chatml", max_length=16)).render(ex)
    assert e.value.reason == "too_long"
    short = conv("hi", "yo")
    rendered, stats = Renderer(tiny_tokenizer, RenderConfig(template="chatml", max_length=16)).render_many([ex, short])
    assert stats.dropped == {"too_long": 1} and stats.n_kept == 1 and len(rendered) == 1
    with pytest.raises(DataError, match="too long.*max_length"):
        Renderer(tiny_tokenizer, RenderConfig(template="chatml", max_length=16, truncation="error")).render_many([ex])


def test_truncate_prompt_keeps_bos_and_last_response(tiny_tokenizer):
    ex = conv("word " * 40, "first answer", "again", "final answer")
    full = Renderer(tiny_tokenizer, RenderConfig(template="chatml", max_length=4096)).render(ex)
    limit = 20
    r = Renderer(
        tiny_tokenizer, RenderConfig(template="chatml", max_length=limit, truncation="truncate-prompt")
    ).render(ex)
    assert r.truncated and len(r) == limit
    assert r.input_ids[0] == tiny_tokenizer.bos_token_id
    assert r.input_ids[1:] == full.input_ids[-(limit - 1) :]
    assert trained_runs(tiny_tokenizer, r.input_ids, r.labels) == ["final answer<|im_end|>"]


def test_truncate_prompt_drops_when_response_alone_is_too_long(tiny_tokenizer):
    ex = conv("q", "long " * 60)
    cfg = RenderConfig(template="chatml", max_length=16, truncation="truncate-prompt")
    _, stats = Renderer(tiny_tokenizer, cfg).render_many([ex])
    assert stats.dropped == {"too_long": 1}


def test_saved_template_renders_identically(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tok = copy.deepcopy(tiny_tokenizer)
    renderer = Renderer(tok, RenderConfig(template="alpaca"))
    save_template(tok, renderer)
    tok.save_pretrained(tmp_path)
    reloaded = Renderer(AutoTokenizer.from_pretrained(tmp_path), RenderConfig(template="auto"))
    for ex in CASES:
        assert reloaded.render(ex) == renderer.render(ex)


text_st = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\n\t "),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip())


@st.composite
def conversations(draw):
    n = draw(st.integers(1, 4))
    system = draw(st.none() | text_st)
    turns, flags = [], []
    for _ in range(n):
        turns += [draw(text_st), draw(text_st)]
        flags.append(draw(st.booleans()))
    if not any(flags):
        flags[-1] = True
    return conv(*turns, system=system, train=flags)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ex=conversations(), template=st.sampled_from(["chatml", "alpaca", "plain"]))
def test_label_alignment_property(tiny_tokenizer, ex, template):
    r = Renderer(tiny_tokenizer, RenderConfig(template=template, max_length=100_000)).render(ex)
    assert len(r.labels) == len(r.input_ids)
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(r.labels, r.input_ids))
    expected = [m.content + END[template] for m in ex.messages if m.trained]
    assert trained_runs(tiny_tokenizer, r.input_ids, r.labels) == expected


def test_token_straddling_a_span_boundary_is_split_like_inference(tmp_path):
    """A response starting with newlines can merge with the template's newline into one token;
    then the pieces are tokenized apart, as inference tokenizes the prompt alone."""
    from transformers import AutoTokenizer

    from instillm.models.factory import init_model

    init_model(preset="tiny", output_dir=tmp_path, corpus=["line\n\n\nnext\n\n\n"] * 200, seed=0)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok("\n\n\n", add_special_tokens=False)["input_ids"]) == 1  # merges exist
    renderer = Renderer(tok, RenderConfig(template="chatml"))
    ex = conv("q", "\n\nanswer")
    r = renderer.render(ex)
    assert trained_runs(tok, r.input_ids, r.labels) == ["\n\nanswer<|im_end|>"]
    prompt_ids = tok(renderer.example_prompt_text(ex), add_special_tokens=False)["input_ids"]
    assert r.input_ids[: len(prompt_ids)] == prompt_ids


WITH_INPUT = Example(
    messages=(Message("user", "Sum these\n\n1 2"), Message("assistant", "3")),
    meta={"instruction": "Sum these", "input": "1 2"},
)
MULTI_TURN = conv("Hi", "Hello there!", "How are you?", "Fine.", system="Be brief.")


@pytest.mark.parametrize("template", sorted(BUILTIN_TEMPLATES))
def test_auto_after_training_renders_the_training_prompt(tiny_tokenizer, tmp_path, template):
    """Training saves a built-in template into the tokenizer; `auto` at inference must render what training did."""
    from instillm.models.loading import inference_renderer, load_tokenizer

    tok = copy.deepcopy(tiny_tokenizer)
    training = Renderer(tok, RenderConfig(template=template))
    save_template(tok, training)
    tok.save_pretrained(tmp_path)
    inference = inference_renderer(load_tokenizer(tmp_path), "auto")
    for ex in (WITH_INPUT, MULTI_TURN):
        assert inference.example_prompt_text(ex) == training.example_prompt_text(ex)
        assert inference.render_text(ex) == training.render_text(ex)
    assert inference.template_name == template
    if template == "alpaca":
        assert "### Input:\n1 2\n\n### Response:\n" in inference.example_prompt_text(WITH_INPUT)


def test_a_tokenizer_template_that_is_no_builtin_keeps_its_name(tiny_tokenizer):
    tok = _with_template(tiny_tokenizer, CHATML.replace("<|im_start|>", "<|im_start|> "))
    assert Renderer(tok, RenderConfig(template="auto")).template_name == "tokenizer"
