"""Multi-task mixing: examples-proportional with a cap, temperature, determinism, CoT ratio."""

from __future__ import annotations

from collections import Counter

import pytest

from instillm.data.mix import allocate, count_tasks, group_by_task, mix_cot, mix_tasks, mixing_rates
from instillm.data.schema import from_prompt_completion
from instillm.errors import ConfigError


def _task(name, n, category=""):
    return [
        from_prompt_completion(f"{name} question {i}", f"answer {i}", id=f"{name}-{i}", task=name, category=category)
        for i in range(n)
    ]


GROUPS = {"big": _task("big", 1000), "mid": _task("mid", 300), "small": _task("small", 50)}


def test_proportional_without_cap_keeps_everything():
    res = mix_tasks(GROUPS, seed=0)
    assert res.counts == {"big": 1000, "mid": 300, "small": 50} == res.available
    assert sorted(ex.id for ex in res.examples) == sorted(ex.id for g in GROUPS.values() for ex in g)


def test_cap_limits_the_big_task():
    res = mix_tasks(GROUPS, cap=200, total=450, seed=0)
    # rate ∝ min(n, 200): 200 : 200 : 50
    assert res.counts == {"big": 200, "mid": 200, "small": 50}
    assert count_tasks(res.examples) == res.counts
    assert len({ex.id for ex in res.examples if ex.task == "mid"}) == 200  # sampled without repetition


def test_temperature_flattens_rates():
    rates_t1 = mixing_rates({"a": 900, "b": 100})
    rates_t2 = mixing_rates({"a": 900, "b": 100}, temperature=2.0)
    assert rates_t1 == pytest.approx({"a": 0.9, "b": 0.1})
    assert rates_t2 == pytest.approx({"a": 30 / 40, "b": 10 / 40})  # sqrt: 30 : 10
    assert mixing_rates({"a": 900, "b": 100}, temperature=1e9) == pytest.approx({"a": 0.5, "b": 0.5}, abs=1e-6)
    res = mix_tasks(GROUPS, cap=400, temperature=2.0, total=1000, seed=0)
    expected = allocate(mixing_rates({"big": 400, "mid": 300, "small": 50}, temperature=2.0), 1000)
    assert res.counts == expected and sum(res.counts.values()) == 1000
    # The small task is upsampled: its 50 examples repeated whole, then topped up.
    assert res.counts["small"] > 50
    per_id = Counter(ex.id for ex in res.examples if ex.task == "small")
    assert set(per_id.values()) <= {res.counts["small"] // 50, res.counts["small"] // 50 + 1}


def test_weights_scale_rates():
    assert mixing_rates({"a": 100, "b": 100}, weights={"a": 3.0}) == pytest.approx({"a": 0.75, "b": 0.25})


def test_deterministic_for_a_seed():
    a = mix_tasks(GROUPS, cap=100, total=300, seed=7)
    b = mix_tasks(dict(reversed(list(GROUPS.items()))), cap=100, total=300, seed=7)
    c = mix_tasks(GROUPS, cap=100, total=300, seed=8)
    assert [ex.id for ex in a.examples] == [ex.id for ex in b.examples]
    assert [ex.id for ex in a.examples] != [ex.id for ex in c.examples]


def test_allocate_sums_exactly():
    counts = allocate({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]


def test_group_by_task_and_errors():
    groups = group_by_task(_task("x", 2) + _task("", 1) + _task("y", 1))
    assert {k: len(v) for k, v in groups.items()} == {"x": 2, "default": 1, "y": 1}
    with pytest.raises(ConfigError, match="temperature"):
        mixing_rates({"a": 1}, temperature=0)
    with pytest.raises(ConfigError, match="every task is empty"):
        mixing_rates({"a": 0})


def test_mix_cot_keeps_the_ratio():
    cot, direct = _task("c", 30, category="cot"), _task("d", 100)
    out = mix_cot(cot + direct, ratio=0.5, seed=0)
    assert sum(ex.category == "cot" for ex in out) == 30 and len(out) == 60  # CoT limits: 30 : 30
    out = mix_cot(cot + direct, ratio=0.1, seed=0)
    assert sum(ex.category == "cot" for ex in out) == 11 and len(out) == 111  # 11 : 100
    assert mix_cot(cot + direct, ratio=0.1, seed=0) == out  # seeded
    assert mix_cot(direct, ratio=0.5) == direct  # nothing to balance
    meta_cot = [from_prompt_completion("q", "step 1 ... so 4", meta={"cot": True}, task="m")]
    assert len(mix_cot(meta_cot + direct[:4], ratio=0.5)) == 2
