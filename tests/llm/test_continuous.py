"""Continuous batching: rows that join and leave a running batch give what they give alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from instillm.errors import DataError
from instillm.llm.continuous import ContinuousBatch, DecodeRow, PrefixCache, common_prefix
from instillm.llm.generation import GenerateOptions, Generator
from instillm.models.loading import load_model, load_tokenizer
from tests.llm.chaotic import make_chaotic


@pytest.fixture(scope="module")
def generator(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    """The tiny model with random weights: it rarely ends early, so budgets and stops matter."""
    out = tmp_path_factory.mktemp("chaotic-continuous") / "model"
    shutil.copytree(tiny_model_dir, out)
    return Generator(make_chaotic(load_model(out, dtype=torch.float32), seed=99), load_tokenizer(out))


def _ids(generator: Generator, text: str) -> list[int]:
    return generator.tokenizer(text, add_special_tokens=False)["input_ids"]


def _alone(generator: Generator, ids: list[int], opts: GenerateOptions, seed: int | None = None):
    return generator.generate_ids([ids], opts, seeds=None if seed is None else [seed])[0]


def _drain(batch: ContinuousBatch, joins: dict[int, list[DecodeRow]]) -> list[DecodeRow]:
    """Step the batch to empty; rows of `joins[k]` are added before step k."""
    done, k = [], 0
    with torch.inference_mode():
        while len(batch) or any(j >= k for j in joins):
            done += batch.add(joins.get(k, []))
            done += batch.step()
            k += 1
    return done


MIXED = [
    ("The cat sat on", GenerateOptions(max_new_tokens=3)),
    ("A much longer prompt about rivers, mountains and the sea, " * 3, GenerateOptions(max_new_tokens=17)),
    ("x", GenerateOptions(max_new_tokens=9)),
    ("Numbers: 1 2 3", GenerateOptions(max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9)),
    ("Sampled hotter", GenerateOptions(max_new_tokens=6, do_sample=True, temperature=1.3, top_k=20)),
    ("Count with me", GenerateOptions(max_new_tokens=25)),
]


def test_rows_joining_at_different_steps_equal_their_solo_outputs(generator):
    rows = [DecodeRow(i, _ids(generator, p), 0, options=o, seed=1000 + i) for i, (p, o) in enumerate(MIXED)]
    joins = {0: rows[:2], 2: rows[2:4], 5: rows[4:5], 11: rows[5:]}
    done = _drain(ContinuousBatch(generator), joins)
    assert sorted(r.index for r in done) == list(range(len(MIXED)))
    for r in rows:
        want = _alone(generator, r.ids, r.options, seed=r.seed)
        assert r.output == want, r.index


def test_a_short_row_leaves_at_once_while_a_long_one_runs(generator):
    long = DecodeRow(0, _ids(generator, "long"), 0, options=GenerateOptions(max_new_tokens=40))
    short = DecodeRow(1, _ids(generator, "short"), 0, options=GenerateOptions(max_new_tokens=2))
    batch = ContinuousBatch(generator)
    with torch.inference_mode():
        batch.add([long])
        for _ in range(5):
            batch.step()
        batch.add([short])
        ended = [batch.step(), batch.step()]
    assert ended == [[], [short]] and len(batch) == 1
    assert short.output == _alone(generator, short.ids, short.options)


def test_partial_steps_in_any_order_equal_solo_outputs(generator):
    """Steps that decode only some rows (reordered, joined, ended between) change no row's output."""
    import random

    rng = random.Random(3)
    rows = [DecodeRow(i, _ids(generator, p), 0, options=o, seed=2000 + i) for i, (p, o) in enumerate(MIXED)]
    batch, done, k = ContinuousBatch(generator), [], 0
    joins = {0: rows[:3], 4: rows[3:5], 9: rows[5:]}
    with torch.inference_mode():
        while len(batch) or any(j >= k for j in joins):
            done += batch.add(joins.get(k, []))
            limit = rng.randint(1, 4)
            batch.prioritize(lambda r: rng.random(), limit)
            done += batch.step(limit)
            k += 1
    assert sorted(r.index for r in done) == list(range(len(MIXED)))
    for r in rows:
        assert r.output == _alone(generator, r.ids, r.options, seed=r.seed), r.index


def test_a_limited_step_decodes_the_prioritized_rows_only(generator):
    rows = [DecodeRow(i, _ids(generator, f"row {i}"), 0, options=GenerateOptions(max_new_tokens=20)) for i in range(5)]
    batch = ContinuousBatch(generator)
    with torch.inference_mode():
        batch.add(rows)
        batch.prioritize(lambda r: -r.index, 2)
        batch.step(2)
        batch.step(2)
    assert [r.steps for r in rows] == [0, 0, 0, 2, 2]
    assert [r.waited for r in rows] == [2, 2, 2, 0, 0]
    assert {r.index for r in batch.rows[:2]} == {3, 4}


def test_stop_strings_and_stop_tokens_are_per_row(generator):
    free = _alone(generator, _ids(generator, "abc"), GenerateOptions(max_new_tokens=12))
    stop_text = free.text[3:6].strip() or free.text[:2]
    stop_tok = free.token_ids[4]
    opts_s = GenerateOptions(max_new_tokens=12, stop_strings=(stop_text,))
    opts_t = GenerateOptions(max_new_tokens=12, stop_token_ids=(stop_tok,))
    rows = [DecodeRow(i, _ids(generator, "abc"), 0, options=o) for i, o in enumerate((opts_s, opts_t))]
    _drain(ContinuousBatch(generator), {0: rows})
    for r in rows:
        assert r.output == _alone(generator, r.ids, r.options)
    assert rows[0].output.stop_string == stop_text and rows[1].output.stop_token_id == stop_tok


def test_on_token_and_should_stop_per_row(generator):
    seen: list[tuple] = []
    steps = {"n": 0}

    def on_token(token, finish) -> None:
        steps["n"] += 1
        seen.append((token, finish))

    row = DecodeRow(0, _ids(generator, "abc"), 0, options=GenerateOptions(max_new_tokens=30), on_token=on_token)
    row.should_stop = lambda: steps["n"] >= 3  # asked before this step's on_token
    skipped = DecodeRow(1, _ids(generator, "x"), 0, should_stop=lambda: True)
    done = _drain(ContinuousBatch(generator), {0: [row, skipped]})
    assert skipped in done and skipped.output.token_ids == [] and skipped.output.finish_reason == "length"
    assert len(row.output.token_ids) == 4 and row.output.finish_reason == "length"
    assert [t for t, _ in seen] == row.output.token_ids and seen[-1][1] == "length"


def test_prefix_cache_reuses_shared_prompts_with_identical_outputs(generator):
    header = "You are given eight examples of tasks. Write a new one like them. " * 2
    prompts = [header + f"Task {i}: do thing {i}" for i in range(3)]
    opts = GenerateOptions(max_new_tokens=8)
    cache = PrefixCache(max_tokens=4096, min_reuse=4)
    batch = ContinuousBatch(generator, cache)
    rows = [DecodeRow(i, _ids(generator, p), 0, options=opts) for i, p in enumerate(prompts)]
    samples = [DecodeRow(10 + i, _ids(generator, prompts[0]), 0, options=opts) for i in range(4)]
    _drain(batch, {0: rows[:1], 1: rows[1:] + samples})
    shared = common_prefix(rows[0].ids, rows[1].ids)
    assert shared > 20
    # prompt 0 once; prompts 1 and 2 past the shared header only; the 4 samples of prompt 0 not at all
    assert batch.prefilled_tokens == sum(len(r.ids) for r in rows) - 2 * shared
    assert batch.reused_tokens == 2 * shared + len(rows[0].ids)
    for r in rows + samples:
        assert r.output == _alone(generator, r.ids, opts)


def test_prefix_cache_is_bounded_and_least_recently_used_goes_first(generator):
    cache = PrefixCache(max_tokens=10, min_reuse=2)
    batch = ContinuousBatch(generator, cache)
    with torch.inference_mode():
        for p in ((1, 2, 3, 4), (5, 6, 7, 8), (1, 2, 3, 4), (9, 10, 11)):
            batch.add([DecodeRow(0, list(p), 0, options=GenerateOptions(max_new_tokens=1))])
    assert cache.lookup((5, 6, 7, 8)) == (0, None)  # evicted: (1, 2, 3, 4) was used again after it
    assert cache.lookup((1, 2, 3, 4))[0] == 4 and cache.lookup((9, 10, 11, 12))[0] == 3
    assert cache.lookup((1, 2, 3))[0] == 2  # a longer prompt's keys, not its logits


def test_fresh_prompts_are_prefilled_packed_together(generator):
    prompts = [f"Prompt number {i} " + "more " * i for i in range(6)]
    opts = GenerateOptions(max_new_tokens=6)
    rows = [DecodeRow(i, _ids(generator, p), 0, options=opts) for i, p in enumerate(prompts)]
    calls = []
    forward_at = generator.forward_at
    generator.forward_at = lambda *a, **k: calls.append(1) or forward_at(*a, **k)
    try:
        _drain(ContinuousBatch(generator), {0: rows})
    finally:
        del generator.forward_at
    assert len(calls) == 1
    for r in rows:
        assert r.output == _alone(generator, r.ids, opts)


def test_a_prompt_the_model_cannot_take_is_refused(generator):
    batch = ContinuousBatch(generator)
    with pytest.raises(DataError, match="empty"):
        batch.add([DecodeRow(0, [], 0)])
    with pytest.raises(DataError, match="max_length"):
        batch.add([DecodeRow(0, [5] * generator.max_length, 0)])
    assert len(batch) == 0


@pytest.mark.parametrize("feature_major", [True, False])
def test_decode_steps_feature_major_or_through_the_model_equal_solo_outputs(generator, feature_major):
    """The batch decodes through `Generator.decode_step`: feature-major (its per-row cache written
    through the same `update`) or through the model's modules; rows joining and leaving give what
    they give alone through the model's modules."""
    gen = Generator(generator.model, generator.tokenizer, feature_major=feature_major)
    reference = Generator(generator.model, generator.tokenizer, feature_major=False)
    steps: list[int] = []
    if feature_major:
        step = gen._step
        gen._step = lambda ids, *args: steps.append(ids.shape[0]) or step(ids, *args)
    rows = [DecodeRow(i, _ids(gen, p), 0, options=o, seed=3000 + i) for i, (p, o) in enumerate(MIXED)]
    _drain(ContinuousBatch(gen), {0: rows[:2], 2: rows[2:4], 5: rows[4:5], 11: rows[5:]})
    for r in rows:
        assert r.output == _alone(reference, r.ids, r.options, seed=r.seed), r.index
    assert (len(steps) > 10 and max(steps) >= 3) if feature_major else not steps
