"""Batched generation: same tokens as naive per-prompt greedy decoding, stopping, sampling, rendering.

The models here are the tiny preset with its 2-D weights redrawn from a seeded N(0, 0.1):
the default random init (std 0.02) collapses into repeating one token ("\\n\\n\\n..."), which
would make "batched == naive" almost vacuous. With std 0.1 every continuation wanders through
the vocabulary, so a single wrong position, mask or cache slot changes the tokens.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

from instillm.data.render import Renderer, end_token_ids
from instillm.errors import ConfigError, DataError, InstillmError
from instillm.llm.generation import (
    GenerateOptions,
    GenerationOutput,
    Generator,
    common_prefix,
    decode_attention,
    generate_chat,
    generate_texts,
    plan_kv_groups,
    shared_prefixes,
)
from tests.llm.chaotic import greedy_one_by_one, make_chaotic

N_NEW = 12


def _chaotic(model_dir: Path, attn: str = "sdpa"):
    from instillm.models.loading import load_model

    model = make_chaotic(load_model(model_dir, dtype=torch.float32, attn_implementation=attn))
    return model.eval()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return _chaotic(tiny_model_dir)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from instillm.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def conversations():
    """10 conversations of clearly different lengths (a system turn and a multi-turn one)."""
    out = []
    for i in range(10):
        msgs = [{"role": "system", "content": "You are terse."}] if i % 4 == 0 else []
        msgs.append({"role": "user", "content": f"Task {i}: list some fruits." + " Add one more detail." * (i * 2)})
        if i == 7:
            msgs += [{"role": "assistant", "content": "Apples."}, {"role": "user", "content": "More?"}]
        out.append(msgs)
    return out


@pytest.fixture(scope="module")
def prompts(tok, conversations):
    return [Renderer(tok).prompt_text(c) for c in conversations]


@pytest.fixture(scope="module")
def naive(model, tok, prompts):
    return greedy_one_by_one(model, tok, prompts, N_NEW)


def _full(o: GenerationOutput) -> list[int]:
    """All generated ids, the stop token included (what `model.generate` returns)."""
    return o.token_ids + ([o.stop_token_id] if o.stop_token_id is not None else [])


def _truncate(ids: list[int], stops: set[int]) -> list[int]:
    """Greedy decoding is prefix-consistent: stopping at `stops` = cutting after the first one."""
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    return ids


# ---------------------------------------------------------------------------- greedy == naive


def test_prompts_have_different_lengths(tok, prompts):
    lens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert len(set(lens)) == len(prompts) >= 8


def test_outputs_are_not_degenerate(naive):
    """Guard of the fixture's premise: continuations are varied, not one repeated token."""
    assert all(len(set(ids)) >= 3 for ids in naive)
    assert len({t for ids in naive for t in ids}) >= 5 * N_NEW
    assert len({tuple(ids) for ids in naive}) == len(naive)


def test_batched_greedy_equals_naive_per_prompt(model, tok, prompts, naive):
    gen = Generator(model, tok)
    outs = gen.generate_texts(prompts, GenerateOptions(max_new_tokens=N_NEW, batch_size=3))
    assert [_full(o) for o in outs] == naive
    for o, p, ids in zip(outs, prompts, naive):
        assert o.prompt_tokens == len(tok(p, add_special_tokens=False)["input_ids"])
        assert o.finish_reason == "length" and o.completion_tokens == len(o.token_ids) == N_NEW
        assert o.text == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("feature_major", [True, False])
@pytest.mark.parametrize("batch_size,prefill_tokens", [(4, 1), (10, 10_000), (1, 512)])
def test_greedy_with_early_stops_equals_naive(model, tok, prompts, naive, batch_size, prefill_tokens, feature_major):
    """A token that greedy decoding emits in some rows (at various steps) is made a stop token:
    those rows finish early and leave the batch, the others continue to the length limit
    (decode steps feature-major and through the model's modules)."""
    counts = Counter(t for ids in naive for t in set(ids[1:-1]))
    stop = next(t for t, n in counts.most_common() if n < len(naive))
    expected = [_truncate(ids, {stop} | end_token_ids(tok)) for ids in naive]
    n_early = sum(len(e) < N_NEW for e in expected)
    assert 2 <= n_early < len(naive), "fixture premise: some rows stop early, some do not"

    gen = Generator(model, tok, feature_major=feature_major)
    decode_rows: list[int] = []
    decode = gen.decode_step

    def spy(tokens, *args):
        decode_rows.append(tokens.shape[0])
        return decode(tokens, *args)

    gen.decode_step = spy
    opts = GenerateOptions(
        max_new_tokens=N_NEW, batch_size=batch_size, stop_token_ids=(stop,), prefill_tokens=prefill_tokens
    )
    outs = gen.generate_texts(prompts, opts)
    assert [_full(o) for o in outs] == expected
    for o, e in zip(outs, expected):
        if len(e) < N_NEW or e[-1] == stop:
            assert o.finish_reason == "stop" and o.stop_token_id == stop
            assert o.token_ids == e[:-1] and o.completion_tokens == len(e)
            assert o.text == tok.decode(e[:-1], skip_special_tokens=True)
        else:
            assert o.finish_reason == "length" and o.stop_token_id is None
            assert len(o.token_ids) == o.completion_tokens == N_NEW
    if batch_size > 1:
        # finished rows were dropped: some decode steps ran with fewer rows than their batch
        assert min(decode_rows) < min(batch_size, len(prompts))
        assert max(decode_rows) <= batch_size


def test_batches_are_length_buckets(model, tok, prompts, monkeypatch):
    gen = Generator(model, tok)
    seen: list[list[int]] = []
    run = gen._generate_batch

    def spy(rows, opts):
        seen.append([len(r.ids) for r in rows])
        return run(rows, opts)

    monkeypatch.setattr(gen, "_generate_batch", spy)
    gen.generate_texts(prompts, GenerateOptions(max_new_tokens=2, batch_size=4))
    lens = sorted(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    assert seen == [lens[0:4], lens[4:8], lens[8:10]]


def test_eager_attention_gives_the_same_tokens(tiny_model_dir, tok, prompts, naive):
    gen = Generator(_chaotic(tiny_model_dir, attn="eager"), tok)
    outs = gen.generate_texts(prompts[:5], GenerateOptions(max_new_tokens=N_NEW, batch_size=5))
    assert [_full(o) for o in outs] == naive[:5]


def test_grouped_decode_attention_is_used_and_changes_nothing(model, tok, prompts, naive, monkeypatch):
    """Rows of very different prompt lengths attend in groups (each reads only its part of the
    cache); the tokens are those of plain SDPA over the whole padded cache, and of naive decoding."""
    import instillm.llm.generation as generation

    seen = []
    grouped = generation._grouped_sdpa

    def spy(module, query, key, value, mask, *args, instillm_kv_groups=None, **kwargs):
        if instillm_kv_groups:
            seen.append(instillm_kv_groups)
        return grouped(module, query, key, value, mask, *args, instillm_kv_groups=instillm_kv_groups, **kwargs)

    from transformers import AttentionInterface

    generation._register_grouped_sdpa()
    monkeypatch.setitem(AttentionInterface._global_mapping, generation._GROUPED_SDPA, spy)
    monkeypatch.setattr(generation, "GROUP_COST", 8)
    opts = GenerateOptions(max_new_tokens=N_NEW, batch_size=10)
    outs = Generator(model, tok, feature_major=False).generate_texts(prompts, opts)
    assert seen and max(len(g) for g in seen) >= 3
    plain = Generator(model, tok, group_attention=False).generate_texts(prompts, opts)
    assert outs == plain and [_full(o) for o in outs] == naive
    assert model.config._attn_implementation == "sdpa"  # restored after the call


@pytest.mark.parametrize(("heads", "kv_heads"), [(6, 2), (4, 4)])
@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_decode_attention_equals_sdpa(heads, kv_heads, mask_kind):
    torch.manual_seed(0)
    rows, keys, dim = 5, 7, 16
    q, k, v = (
        torch.randn(rows, heads, 1, dim),
        torch.randn(rows, kv_heads, keys, dim),
        torch.randn(rows, kv_heads, keys, dim),
    )
    ok = torch.arange(keys)[None, :] < torch.tensor([7, 3, 5, 1, 6])[:, None]
    mask = {"bool": ok, "additive": torch.zeros(ok.shape).masked_fill(~ok, -1e9), "none": None}[mask_kind]
    mask = None if mask is None else mask[:, None, None, :]
    rep = heads // kv_heads
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask, scale=0.3
    )
    got = decode_attention(q, k, v, mask, scaling=0.3)
    assert got.shape == (rows, 1, heads, dim) and got.is_contiguous()
    torch.testing.assert_close(got, want.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_decode_steps_of_eight_rows_or_more_use_decode_attention(model, tok, prompts, naive, monkeypatch):
    import instillm.llm.generation as generation

    rows = []
    real = generation.decode_attention

    def spy(query, *args, **kwargs):
        rows.append(query.shape[0])
        return real(query, *args, **kwargs)

    monkeypatch.setattr(generation, "decode_attention", spy)
    monkeypatch.setattr(generation, "GROUP_COST", 10**9)  # one group: every decode step has 8+ rows here
    opts = GenerateOptions(max_new_tokens=N_NEW, batch_size=10)
    outs = Generator(model, tok, group_attention=True, feature_major=False).generate_texts(prompts, opts)
    assert [_full(o) for o in outs] == naive
    assert rows and min(rows) >= generation.DECODE_ATTENTION_ROWS


def test_attention_implementation_is_restored_after_an_error(model, tok, prompts, monkeypatch):
    gen = Generator(model, tok)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gen, "_prefill", boom)
    with pytest.raises(RuntimeError):
        gen.generate_texts(prompts[:2])
    assert model.config._attn_implementation == "sdpa" and not model.training


def test_plan_kv_groups():
    lens = [10, 11, 12, 100, 101, 400]
    groups = plan_kv_groups(lens, extra=8, group_cost=50)
    # contiguous cover of all rows; each group starts reading where its longest row starts
    assert [g[0] for g in groups] == [0] + [g[1] for g in groups[:-1]] and groups[-1][1] == len(lens)
    assert all(lo == 400 - lens[b - 1] for a, b, lo in groups)
    assert groups == [(0, 3, 388), (3, 5, 299), (5, 6, 0)]
    # a group costs more than the padding it saves: one group
    assert plan_kv_groups(lens, extra=8, group_cost=10**6) == [(0, 6, 0)]
    assert plan_kv_groups([7, 7, 7], extra=1) == [(0, 3, 0)]
    assert plan_kv_groups([], extra=1) == []


# ---------------------------------------------------------------------------- shared prefixes


def test_shared_prefixes_groups_prompts_by_their_common_start():
    header = list(range(100, 120))  # 20 tokens
    prompts = [
        header + [1, 2, 3],  # 0
        [7, 8, 9, 10],  # 1: alone
        header + [1, 2, 4, 5],  # 2: shares 22 with 0
        header[:18] + [9],  # 3: shares 18 with the others
        header + [1, 2, 3],  # 4: same as 0, its last token is not shared
        list(range(50, 60)) + [1],  # 5
        list(range(50, 60)) + [2],  # 6: shares 10 with 5: under the minimum
    ]
    assert shared_prefixes(prompts, 16, cost=0) == [([0, 2, 3, 4], 18)]
    assert sorted(shared_prefixes(prompts, 8, cost=0)) == [([0, 2, 3, 4], 18), ([5, 6], 10)]
    assert shared_prefixes([header + [1], header + [1]], 16, cost=0) == [([0, 1], 20)]
    assert shared_prefixes([header], 16) == [] and shared_prefixes([], 16) == []
    assert common_prefix(prompts[0], prompts[2]) == 22 and common_prefix([], [1]) == 0
    # a group's cost counts against it: 4 prompts skip 4 x 18 tokens, and the first computes them once
    assert shared_prefixes(prompts, 16, cost=3 * 18 - 1) == [([0, 2, 3, 4], 18)]
    assert shared_prefixes(prompts, 16, cost=3 * 18) == []


def test_shared_prefixes_does_not_tie_a_long_header_to_a_short_one():
    system = list(range(100, 120))  # 20 tokens all four share
    few_shot = list(range(200, 400))  # 200 more that three of them share
    prompts = [system + few_shot + [1], system + [7, 7], system + few_shot + [2], system + few_shot + [3]]
    assert shared_prefixes(prompts, 16, cost=10) == [([0, 2, 3], 220)]
    # all four at 20 tokens would skip fewer: 3 x 20 against 2 x 220
    assert shared_prefixes(prompts[:2], 16, cost=10) == [([0, 1], 20)]


@pytest.fixture(scope="module")
def header_prompts(tok):
    """Prompts of one long system prompt (two thirds of them) and others, of various lengths; one repeated."""
    system = "You are a careful assistant. Answer every question in full sentences and check each fact twice."
    convs = []
    for i in range(9):
        msgs = [{"role": "system", "content": system}] if i % 3 else []
        convs.append(msgs + [{"role": "user", "content": f"Question {i}:" + " tell me more" * (i % 4)}])
    prompts = [Renderer(tok).prompt_text(c) for c in convs]
    return prompts + [prompts[1]]


@pytest.fixture(scope="module")
def header_naive(model, tok, header_prompts):
    return greedy_one_by_one(model, tok, header_prompts, N_NEW)


def _prefilled_tokens(gen: Generator) -> list[int]:
    """Spy on `gen`: the number of tokens of every prefill call (query length > 1) goes to the list."""
    seen: list[int] = []
    forward = gen.forward_last

    def spy(input_ids, *args, **kwargs):
        if input_ids.shape[1] > 1:
            seen.append(int((input_ids != gen.pad_id).sum()))
        return forward(input_ids, *args, **kwargs)

    gen.forward_last = spy  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("batch_size,prefill_tokens", [(10, 10_000), (10, 1), (4, 64)])
def test_a_shared_prefix_is_prefilled_once_and_changes_no_token(
    model, tok, header_prompts, header_naive, batch_size, prefill_tokens
):
    ids = tok(header_prompts, add_special_tokens=False)["input_ids"]
    groups = shared_prefixes(ids, 16)
    assert groups and groups[0][1] >= 16, "fixture premise: a long shared prefix"
    gen = Generator(model, tok)
    prefilled = _prefilled_tokens(gen)
    opts = GenerateOptions(max_new_tokens=N_NEW, batch_size=batch_size, prefill_tokens=prefill_tokens)
    outs = gen.generate_texts(header_prompts, opts)
    assert [_full(o) for o in outs] == header_naive
    assert gen.shared_prefix_tokens > 0
    plain = Generator(model, tok)
    plain_prefilled = _prefilled_tokens(plain)
    assert plain.generate_texts(header_prompts, dataclasses.replace(opts, min_shared_prefix=0)) == outs
    assert plain.shared_prefix_tokens == 0 and sum(plain_prefilled) == sum(len(x) for x in ids)
    assert sum(prefilled) < sum(plain_prefilled)
    assert gen.prefilled_tokens == sum(prefilled) and plain.prefilled_tokens == sum(plain_prefilled)


def test_shared_prefix_with_eager_attention_and_sampling(tiny_model_dir, tok, header_prompts, header_naive):
    gen = Generator(_chaotic(tiny_model_dir, attn="eager"), tok)
    outs = gen.generate_texts(header_prompts, GenerateOptions(max_new_tokens=N_NEW, batch_size=10))
    assert [_full(o) for o in outs] == header_naive and gen.shared_prefix_tokens > 0
    sampled = GenerateOptions(max_new_tokens=N_NEW, batch_size=10, do_sample=True, temperature=0.8, seed=3)
    a = gen.generate_texts(header_prompts, sampled)
    b = gen.generate_texts(header_prompts, dataclasses.replace(sampled, min_shared_prefix=0))
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


# ---------------------------------------------------------------------------- stopping


def test_stops_at_end_of_turn_token(tiny_model_dir, tok, prompts):
    """A model whose head prefers `<|im_end|>` after any token stops at once: empty text."""
    model = _chaotic(tiny_model_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in Generator(model, tok).end_ids and tok.eos_token_id in Generator(model, tok).end_ids
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[im_end] = 1e4
    model.lm_head = head
    outs = Generator(model, tok).generate_texts(prompts[:3], GenerateOptions(max_new_tokens=5))
    for o in outs:
        assert (o.text, o.token_ids, o.finish_reason, o.stop_token_id, o.completion_tokens) == (
            "",
            [],
            "stop",
            im_end,
            1,
        )


def test_generation_config_eos_is_a_stop_token(tiny_model_dir, tok, prompts, naive):
    model = _chaotic(tiny_model_dir)
    stop = naive[0][3]
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    out = Generator(model, tok).generate_texts(prompts[:1], GenerateOptions(max_new_tokens=N_NEW))[0]
    first = naive[0].index(stop)
    assert out.finish_reason == "stop" and out.stop_token_id == stop
    assert out.token_ids == naive[0][:first]
    assert out.text == tok.decode(naive[0][:first], skip_special_tokens=True)


def test_stop_strings_cut_the_text(model, tok, prompts):
    gen = Generator(model, tok)
    opts = GenerateOptions(max_new_tokens=N_NEW)
    full = gen.generate_texts(prompts[:2], opts)
    text = full[1].text
    stop = next(
        text[i : i + 3] for i in range(4, len(text) - 3) if text[i : i + 3].strip() and text.find(text[i : i + 3]) == i
    )
    cut = gen.generate_texts(prompts[:2], dataclasses.replace(opts, stop_strings=(stop, "\x00never")))
    assert cut[1].finish_reason == "stop" and cut[1].stop_string == stop and cut[1].stop_token_id is None
    assert cut[1].text == text[: text.index(stop)]
    assert stop in tok.decode(cut[1].token_ids) and cut[1].token_ids == full[1].token_ids[: len(cut[1].token_ids)]
    assert len(cut[1].token_ids) < N_NEW
    # the other row did not contain it and is unchanged
    assert stop not in full[0].text and cut[0] == full[0]


# ---------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_and_seeded(model, tok, prompts):
    gen = Generator(model, tok)
    opts = GenerateOptions(max_new_tokens=N_NEW, do_sample=True, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    a = gen.generate_texts(prompts, opts)
    b = gen.generate_texts(prompts, opts)
    assert a == b
    c = gen.generate_texts(prompts, dataclasses.replace(opts, seed=8))
    assert [o.token_ids for o in c] != [o.token_ids for o in a]
    # each prompt has its own generator: results do not depend on batching
    d = gen.generate_texts(prompts, dataclasses.replace(opts, batch_size=3))
    assert [o.token_ids for o in d] == [o.token_ids for o in a]
    greedy = gen.generate_texts(prompts, GenerateOptions(max_new_tokens=N_NEW))
    assert [o.token_ids for o in a] != [o.token_ids for o in greedy]


def test_top_k_1_sampling_equals_greedy(model, tok, prompts, naive):
    gen = Generator(model, tok)
    outs = gen.generate_texts(
        prompts, GenerateOptions(max_new_tokens=N_NEW, do_sample=True, top_k=1, temperature=0.7, seed=3, batch_size=4)
    )
    assert [_full(o) for o in outs] == naive


def test_tiny_top_p_equals_greedy(model, tok, prompts, naive):
    gen = Generator(model, tok)
    outs = gen.generate_texts(prompts[:4], GenerateOptions(max_new_tokens=N_NEW, do_sample=True, top_p=1e-6, seed=5))
    assert [_full(o) for o in outs] == naive[:4]


# ---------------------------------------------------------------------------- rendering and API


def test_generate_chat_renders_with_the_training_template(model, tok, conversations, prompts):
    gen = Generator(model, tok)
    rendered = gen.render_prompts(conversations)
    assert rendered == prompts == [Renderer(tok).prompt_text(c) for c in conversations]
    assert all(p.startswith(tok.bos_token) and not p.startswith(tok.bos_token * 2) for p in rendered)
    assert all(p.endswith("<|im_start|>assistant\n") for p in rendered)
    opts = GenerateOptions(max_new_tokens=4)
    chat = gen.generate_chat(conversations, opts)
    assert chat == gen.generate_texts(prompts, opts)
    assert chat == generate_chat(model, tok, conversations, opts) == generate_texts(model, tok, prompts, opts)
    # the prompt is tokenized as training tokenizes it: one BOS, no extra special tokens
    ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    assert chat[0].prompt_tokens == len(ids) and ids.count(tok.bos_token_id) == 1


def test_custom_renderer_is_used(model, tok, conversations):
    from instillm.data.render import RenderConfig

    renderer = Renderer(tok, RenderConfig(template="alpaca"))
    gen = Generator(model, tok, renderer=renderer)
    assert gen.render_prompts(conversations[:2]) == [renderer.prompt_text(c) for c in conversations[:2]]
    assert "### Response:" in gen.render_prompts(conversations[:1])[0]


def test_empty_prompt_list(model, tok):
    gen = Generator(model, tok)
    assert gen.generate_texts([]) == []
    assert gen.generate_chat([]) == []


def test_too_long_prompt_names_max_length(model, tok):
    gen = Generator(model, tok)
    limit = model.config.max_position_embeddings
    long_prompt = tok.bos_token + "word " * (limit + 10)
    with pytest.raises(DataError, match="max_length") as info:
        gen.generate_texts(["<s>hi", long_prompt])
    assert isinstance(info.value, InstillmError)
    assert f"max_length={limit}" in str(info.value) and "prompt 1" in str(info.value)
    with pytest.raises(DataError, match="empty"):
        gen.generate_texts([""])


def test_completion_is_capped_by_max_length(model, tok, prompts):
    n = len(tok(prompts[0], add_special_tokens=False)["input_ids"])
    gen = Generator(model, tok, max_length=n + 3)
    out = gen.generate_texts(prompts[:1], GenerateOptions(max_new_tokens=N_NEW))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 3


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"batch_size": 0}, "batch_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_shared_prefix": -1}, "min_shared_prefix"),
        ({"stop_strings": ("",)}, "stop_strings"),
    ],
)
def test_invalid_options_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        GenerateOptions(**kwargs)


def test_options_are_frozen_and_normalised():
    opts = GenerateOptions(stop_strings=["###"], stop_token_ids=[5])
    assert opts.stop_strings == ("###",) and opts.stop_token_ids == (5,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_new_tokens = 3  # type: ignore[misc]
