"""The built-in skills suite: families, deterministic disjoint splits, checkers, baselines, I/O."""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict

import pytest

from instillm.data.importer import read_examples
from instillm.data.schema import Example, Message
from instillm.data.skills import (
    CATEGORIES,
    DEFAULT_HELDOUT_FAMILIES,
    FAMILIES,
    SPLITS,
    SuiteConfig,
    baseline_exact_match,
    build_suite,
    check,
    heldout_family_names,
    list_families,
    render,
    write_suite,
)
from instillm.data.skills.checkers import final_answer
from instillm.errors import ConfigError, DataError

SMALL = SuiteConfig(seed=3, n_train_per_family=40, n_eval_per_family=6)


@pytest.fixture(scope="module")
def suite():
    return build_suite(SuiteConfig())


def _pattern(phrasing: str) -> re.Pattern:
    """A regex matching any user content rendered from `phrasing`."""
    if "{input}" not in phrasing:
        return re.compile(re.escape(phrasing + "\n\n") + ".+", re.DOTALL)
    before, after = phrasing.split("{input}")
    return re.compile(re.escape(before) + ".+" + re.escape(after), re.DOTALL)


def _by_family(examples):
    groups = defaultdict(list)
    for ex in examples:
        groups[ex.meta["family"]].append(ex)
    return groups


# --- families -----------------------------------------------------------------------------------


def test_at_least_30_families_with_8_distinct_phrasings_covering_every_category():
    assert len(FAMILIES) >= 30
    assert {f.category for f in FAMILIES.values()} == set(CATEGORIES)
    for fam in FAMILIES.values():
        assert len(set(fam.phrasings)) == len(fam.phrasings) >= 8, fam.name
        inline = [p for p in fam.phrasings if "{input}" in p]
        assert inline and len(inline) < len(fam.phrasings), f"{fam.name}: needs inline and separate-block phrasings"
        assert all(p.count("{input}") <= 1 for p in fam.phrasings)
    assert set(DEFAULT_HELDOUT_FAMILIES) <= set(FAMILIES)
    rows = list_families()
    assert [r["name"] for r in rows] == list(FAMILIES)
    assert all(r["sample"]["assistant"] for r in rows)


def test_every_phrasing_carries_its_family_keywords():
    for fam in FAMILIES.values():
        for phrasing in fam.phrasings:
            for kw in fam.keywords:
                assert re.search(kw, phrasing, re.IGNORECASE), (fam.name, kw, phrasing)


def test_no_phrasing_can_render_as_another_so_disjointness_holds_for_any_seed():
    phrasings = [(f.name, p) for f in FAMILIES.values() for p in f.phrasings]
    assert len({p for _, p in phrasings}) == len(phrasings), "phrasings must be unique across families"
    rendered = [render(p, "zu 7 ka") for _, p in phrasings]
    for name, p in phrasings:
        pat = _pattern(p)
        for (other_name, q), text in zip(phrasings, rendered):
            if q == p:
                continue
            assert not pat.fullmatch(text), (name, p, other_name, q)
            if "{input}" not in p:
                assert p not in text, (name, p, other_name, q)


def test_answers_depend_on_the_input_and_are_short():
    rng = random.Random(0)
    for fam in FAMILIES.values():
        inputs = [fam.gen(rng) for _ in range(400)]
        answers = [fam.solve(i) for i in inputs]
        top = max(answers.count(a) for a in set(answers))
        assert top / len(answers) < 0.12, (fam.name, top)
        assert max(map(len, inputs)) <= 80, fam.name
        lengths = sorted(map(len, answers))
        limit = 80 if fam.category == "cot" else 60
        assert lengths[-1] <= limit and (fam.category == "cot" or lengths[len(lengths) // 2] <= 40), fam.name


# --- building ----------------------------------------------------------------------------------


def test_sizes_and_meta(suite):
    cfg = SuiteConfig()
    held = set(heldout_family_names(cfg))
    assert held == set(DEFAULT_HELDOUT_FAMILIES)
    assert list(suite) == list(SPLITS)
    for split, examples in suite.items():
        counts = _by_family(examples)
        expected = held if split == "heldout_families" else set(FAMILIES) - held
        assert set(counts) == expected, split
        size = cfg.n_train_per_family if split == "train" else cfg.n_eval_per_family
        assert all(len(v) == size for v in counts.values()), split
        for ex in examples:
            assert ex.meta["split"] == split and ex.task == ex.meta["family"]
            assert ex.category == FAMILIES[ex.task].category and ex.source == "instillm-skills"
            assert [m.role for m in ex.messages] == ["user", "assistant"]


def test_every_answer_is_what_solve_computes(suite):
    for examples in suite.values():
        for ex in examples:
            fam = FAMILIES[ex.meta["family"]]
            assert ex.reference == ex.meta["answer"] == fam.solve(ex.meta["input"])
            assert ex.messages[0].content == render(fam.phrasings[ex.meta["phrasing"]], ex.meta["input"])


def test_deterministic_for_a_seed_and_different_across_seeds():
    def dump(s):
        return {k: [ex.to_json() for ex in v] for k, v in s.items()}

    a, b = dump(build_suite(SMALL)), dump(build_suite(SMALL))
    assert a == b
    c = dump(build_suite(SuiteConfig(seed=4, n_train_per_family=40, n_eval_per_family=6)))
    for split in SPLITS:
        assert a[split] != c[split]


def test_a_family_does_not_depend_on_the_other_families_selected():
    full = build_suite(SMALL)
    part = build_suite(
        SuiteConfig(seed=3, n_train_per_family=40, n_eval_per_family=6, families=("reverse_word", "uppercase"))
    )
    for split in ("heldout_instances", "heldout_phrasings"):
        assert [e for e in full[split] if e.task == "reverse_word"] == [
            e for e in part[split] if e.task == "reverse_word"
        ]
    assert part["heldout_families"] == []  # none of the default held-out families is selected


@pytest.mark.parametrize("seed", [0, 1])
def test_splits_are_disjoint(seed):
    s = build_suite(SuiteConfig(seed=seed))
    train = s["train"]
    train_text = "\x00" + "\x00".join(ex.messages[0].content for ex in train) + "\x00"
    trained_phrasings = defaultdict(set)
    train_inputs = defaultdict(set)
    for ex in train:
        trained_phrasings[ex.task].add(ex.meta["phrasing"])
        train_inputs[ex.task].add(ex.meta["input"])

    held_phrasings = {(ex.task, ex.meta["phrasing"]) for ex in s["heldout_phrasings"]}
    assert len(held_phrasings) == 2 * len(trained_phrasings)
    for name, idx in held_phrasings:
        assert idx not in trained_phrasings[name]
        phrasing = FAMILIES[name].phrasings[idx]
        if "{input}" in phrasing:
            before, after = (re.escape(x) for x in phrasing.split("{input}"))
            assert not re.search("\x00" + before + "[^\x00]+" + after + "\x00", train_text), phrasing
        else:
            assert phrasing not in train_text, phrasing

    train_contents = {ex.messages[0].content for ex in train}
    for split in ("heldout_instances", "heldout_phrasings"):
        for ex in s[split]:
            assert ex.messages[0].content not in train_contents
            assert ex.meta["input"] not in train_inputs[ex.task]
    assert not {ex.task for ex in s["heldout_families"]} & {ex.task for ex in train}
    ids = [ex.id for split in s.values() for ex in split]
    assert len(ids) == len(set(ids))


def test_heldout_phrasings_use_only_words_seen_in_train(suite):
    """A model trained from scratch knows no word it never saw: held-out wordings recombine seen ones."""
    seen = {w for ex in suite["train"] for w in re.findall(r"\w+", ex.messages[0].content)}
    for ex in suite["heldout_phrasings"]:
        template = FAMILIES[ex.task].phrasings[ex.meta["phrasing"]].replace("{input}", " ")
        assert set(re.findall(r"\w+", template)) <= seen, template


# --- checking ----------------------------------------------------------------------------------


def test_checker_accepts_the_reference_and_rejects_wrong_answers(suite):
    examples = [ex for split in SPLITS[1:] for ex in suite[split]] + suite["train"][:2000]
    for name, group in _by_family(examples).items():
        finals = [final_answer(ex.reference).strip() for ex in group]
        for i, ex in enumerate(group):
            assert check(ex, ex.reference), (name, ex.reference)
            assert check(ex, f"  {ex.reference}\n"), name
            assert not check(ex, ""), name
            assert not check(ex, ex.reference[:-1]), (name, ex.reference)
            other = next(o for o, f in zip(group, finals) if f != finals[i])
            assert not check(ex, other.reference), (name, ex.reference, other.reference)


def test_checkers_accept_equivalent_forms():
    def ex(family, answer):
        return Example((Message("user", "q"), Message("assistant", answer)), meta={"family": family})

    assert check(ex("json_object", '{"pet": "kamo", "city": "tilu"}'), '{ "city":"tilu",\n "pet":"kamo" }')
    assert not check(ex("json_object", '{"pet": "kamo"}'), '{"pet": "tilu"}')
    assert check(ex("sort_numbers", "3 7 19"), "3, 7, 19")
    assert not check(ex("sort_numbers", "3 7 19"), "3 19 7")
    assert check(ex("csv_line", "a,b,c"), "a, b, c")
    assert check(ex("bullet_list", "- a\n- b"), "* a\n* b")
    assert check(ex("numbered_list", "1. a\n2. b"), "1) a\n2) b")
    assert not check(ex("numbered_list", "1. a\n2. b"), "1. a\n3. b")
    assert check(ex("even_odd", "14 is even"), "14 is even.")
    assert not check(ex("uppercase", "KAMO"), "kamo")
    assert check(ex("cot_range", "Step 1: max 9. Step 2: min 2. Step 3: 9 - 2 = 7. Answer: 7"), "Answer: 7")
    assert not check(ex("cot_range", "Step 1: max 9. Step 2: min 2. Step 3: 9 - 2 = 7. Answer: 7"), "Answer: 8")
    with pytest.raises(DataError):
        check(ex("no_such_family", "x"), "x")


def test_most_frequent_answer_baseline_stays_below_20_percent(suite):
    for split in ("heldout_instances", "heldout_phrasings"):
        baseline = baseline_exact_match(suite[split], train=suite["train"])
        assert set(baseline) == set(FAMILIES) - set(DEFAULT_HELDOUT_FAMILIES)
        assert max(baseline.values()) < 0.20, sorted(baseline.items(), key=lambda kv: -kv[1])[:3]
    zero_shot = baseline_exact_match(suite["heldout_families"], train=suite["train"])
    assert set(zero_shot) == set(DEFAULT_HELDOUT_FAMILIES) and max(zero_shot.values()) < 0.20


def test_baseline_uses_the_most_frequent_train_answer():
    def ex(answer):
        return Example((Message("user", "q"), Message("assistant", answer)), meta={"family": "max_number"})

    train = [ex("5"), ex("5"), ex("7")]
    assert baseline_exact_match([ex("5"), ex("7"), ex("9"), ex("9")], train=train) == {"max_number": 0.25}
    assert baseline_exact_match([ex("5"), ex("7"), ex("9"), ex("9")]) == {"max_number": 0.5}


# --- writing and configuration -----------------------------------------------------------------


def test_write_and_read_back_gives_identical_examples(tmp_path):
    s = build_suite(SMALL)
    paths = write_suite(s, tmp_path / "skills")
    assert set(paths) == set(SPLITS)
    for split, path in paths.items():
        assert path == tmp_path / "skills" / f"{split}.jsonl"
        assert list(read_examples(path)) == s[split]
        first = json.loads(path.read_text().splitlines()[0])
        assert first["meta"]["split"] == split


def test_heldout_families_by_name_or_count():
    cfg = SuiteConfig(n_train_per_family=5, n_eval_per_family=2, heldout_families=("uppercase",))
    s = build_suite(cfg)
    assert {ex.task for ex in s["heldout_families"]} == {"uppercase"}
    picked = heldout_family_names(SuiteConfig(heldout_families=4, seed=1))
    assert len(picked) == 4
    for name in picked:
        assert FAMILIES[name].builds_on and not set(FAMILIES[name].builds_on) & set(picked)
    assert heldout_family_names(SuiteConfig(heldout_families=4, seed=1)) == picked
    assert heldout_family_names(SuiteConfig(heldout_families=0)) == ()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"families": ("nope",)}, "skills.families"),
        ({"n_train_per_family": 0}, "n_train_per_family"),
        ({"n_eval_per_family": -1}, "n_eval_per_family"),
        ({"heldout_phrasings_per_family": 10}, "heldout_phrasings_per_family"),
        ({"heldout_families": -1}, "heldout_families"),
        ({"heldout_families": "uppercase"}, "heldout_families"),
        ({"heldout_families": ("nope",)}, "heldout_families"),
        ({"families": ()}, "skills.families"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SuiteConfig(**kwargs)


def test_unselected_or_all_heldout_families_are_refused():
    with pytest.raises(ConfigError, match="heldout_families"):
        build_suite(SuiteConfig(families=("uppercase",), heldout_families=("lowercase",)))
    with pytest.raises(ConfigError, match="nothing would be trained"):
        build_suite(SuiteConfig(families=("uppercase",), heldout_families=("uppercase",)))
    with pytest.raises(ConfigError, match="distinct inputs"):
        build_suite(SuiteConfig(families=("larger_number",), n_train_per_family=20_000))


def test_cap_to_input_space_trains_on_every_remaining_input_and_keeps_the_eval_sets():
    kw = {"families": ("even_odd", "larger_number"), "heldout_families": (), "n_eval_per_family": 40}
    with pytest.raises(ConfigError, match="cap_to_input_space"):
        build_suite(SuiteConfig(n_train_per_family=2000, **kw))
    capped = build_suite(SuiteConfig(n_train_per_family=2000, cap_to_input_space=True, **kw))
    exact = build_suite(SuiteConfig(n_train_per_family=900, **kw))
    counts = _by_family(capped["train"])
    # even_odd has 999 distinct inputs (1..999): all but the 80 evaluated are trained
    assert len(counts["even_odd"]) == 999 - 80 and len(counts["larger_number"]) == 2000
    train_inputs = {ex.meta["input"] for ex in capped["train"] if ex.task == "even_odd"}
    assert len(train_inputs) == 919
    for split in ("heldout_instances", "heldout_phrasings"):
        assert capped[split] == exact[split]  # eval inputs come first: unchanged by the train size
        assert not {ex.meta["input"] for ex in capped[split] if ex.task == "even_odd"} & train_inputs
    with pytest.raises(ConfigError, match="1001 needed"):  # eval sets still must fit
        build_suite(
            SuiteConfig(
                families=("even_odd",),
                heldout_families=(),
                n_eval_per_family=500,
                n_train_per_family=10,
                cap_to_input_space=True,
            )
        )
