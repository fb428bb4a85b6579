"""Dedup: the greedy ROUGE-L filter equals the Self-Instruct filter on rouge-score, exact keys, MinHash-LSH,
file API."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instillm.curate.dedup import (
    MinHasher,
    RougeLFilter,
    dedup_file,
    exact_dedup,
    example_key,
    lsh_params,
    minhash_dedup,
    rouge_filter,
    rouge_filter_examples,
    shingle_hash32,
)
from instillm.data.importer import read_examples, write_examples
from instillm.data.schema import Example, Message
from instillm.errors import ConfigError, DataError
from instillm.metrics import rouge_l_tokens, rouge_tokenize

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def reference_filter(texts, threshold=0.7, against=()):
    """The Self-Instruct filter, straight: score each new text against every kept one, drop if max F > threshold."""
    kept = list(against)
    flags = []
    for text in texts:
        scores = [SCORER.score(text, k)["rougeL"].fmeasure for k in kept]
        keep = not scores or max(scores) <= threshold
        flags.append(keep)
        if keep:
            kept.append(text)
    return flags


def bruteforce_filter(texts, threshold=0.7):
    """The same greedy loop without any pruning, on the bit-parallel ROUGE-L (equal to rouge-score bit for bit)."""
    kept, flags = [], []
    for toks in map(rouge_tokenize, texts):
        keep = all(rouge_l_tokens(toks, k).fmeasure <= threshold for k in kept)
        flags.append(keep)
        if keep:
            kept.append(toks)
    return flags


def real_instructions(shared: Path) -> list[str]:
    """Instructions of the reference data, in a fixed order (seeds, user-oriented, AlpacaEval, WizardLM, MT-Bench,
    IFEval)."""
    out: list[str] = []
    for name, key in (
        ("self_instruct/seed_tasks.jsonl", "instruction"),
        ("self_instruct/user_oriented_instructions.jsonl", "instruction"),
        ("wizardlm/WizardLM_testset.jsonl", "Instruction"),
        ("ifeval/input_data.jsonl", "prompt"),
    ):
        with open(shared / name, encoding="utf-8") as f:
            out += [json.loads(line)[key] for line in f if line.strip()]
    out += [r["instruction"] for r in json.loads((shared / "alpaca_eval/text_davinci_003_outputs.json").read_text())]
    with open(shared / "mt_bench/question.jsonl", encoding="utf-8") as f:
        out += [t for line in f if line.strip() for t in json.loads(line)["turns"]]
    return out


# ---------------------------------------------------------------- ROUGE-L decisions

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "write", "poem"]
TEXT = st.lists(st.sampled_from(WORDS + ["!", "...", "", "Cat,", "42"]), max_size=12).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(TEXT, max_size=25),
    against=st.lists(TEXT, max_size=3),
    threshold=st.sampled_from([0.7, 0.5, 0.3, 0.0, 0.9, 1.0, 0.65, -0.1]),
)
def test_rouge_filter_equals_rouge_score_on_random_lists(texts, against, threshold):
    assert rouge_filter(texts, threshold, against) == reference_filter(texts, threshold, against)


def _edit(rng: random.Random, words: list[str]) -> list[str]:
    """A near copy: a few words deleted, replaced or inserted."""
    w = list(words)
    for _ in range(rng.randint(1, 4)):
        op, i = rng.random(), rng.randrange(len(w) + 1)
        if op < 0.33 and i < len(w) and len(w) > 1:
            del w[i]
        elif op < 0.66 and i < len(w):
            w[i] = rng.choice(WORDS)
        else:
            w.insert(i, rng.choice(WORDS + ["new", "extra"]))
    return w


def test_rouge_filter_equals_rouge_score_on_seeded_near_duplicates():
    rng = random.Random(7)
    for _ in range(20):
        bases = [[rng.choice(WORDS) for _ in range(rng.randint(3, 15))] for _ in range(4)]
        texts = []
        for _ in range(30):
            texts.append(" ".join(_edit(rng, rng.choice(bases))) if rng.random() < 0.8 else "?!")
        assert rouge_filter(texts) == reference_filter(texts)


@pytest.mark.parametrize(
    "la,lb,lcs",
    [
        (la, lb, lcs)
        for la in range(1, 31)
        for lb in range(1, 31)
        for lcs in range(1, min(la, lb) + 1)
        if 20 * lcs == 7 * (la + lb)
    ],
)
def test_rouge_filter_at_exactly_the_threshold(la, lb, lcs):
    """F = 0.7 in exact arithmetic: the float decision must be rouge-score's, whichever side it rounds to.

    Also with a swapped token pair, so the multiset bound (LCS + 1) is loose and the exact score is computed.
    """
    a = [f"s{i}" for i in range(lcs)] + [f"a{i}" for i in range(la - lcs)]
    b = [f"s{i}" for i in range(lcs)] + [f"b{i}" for i in range(lb - lcs)]
    cases = [(a, b)]
    if lcs >= 2 and la - lcs >= 1 and lb - lcs >= 1:  # ... p q a0 ... / ... q p b0 ...: LCS unchanged, overlap + 1
        cases.append((a[: lcs - 1] + ["p", "q"] + a[lcs + 1 :], b[: lcs - 1] + ["q", "p"] + b[lcs + 1 :]))
    for x, y in cases:
        texts = [" ".join(x), " ".join(y)]
        assert rouge_filter(texts) == reference_filter(texts)


def test_rouge_filter_equals_rouge_score_on_real_instructions(shared_data):
    """Real lists against rouge-score itself (kept small: the reference costs ~0.3 ms per pair)."""
    real = real_instructions(shared_data)
    sample = real[::16][:130]  # every source represented
    with open(shared_data / "conformance/rouge_filter_input.jsonl", encoding="utf-8") as f:
        conformance = [json.loads(line)["instruction"] for line in f][:130]
    for texts in (sample, conformance):
        assert rouge_filter(texts) == reference_filter(texts)


def test_rouge_filter_equals_unpruned_loop_on_more_real_instructions(shared_data):
    """Pruning never changes a decision: 300 real + the first 300 conformance texts against the unpruned loop."""
    real = real_instructions(shared_data)
    with open(shared_data / "conformance/rouge_filter_input.jsonl", encoding="utf-8") as f:
        conformance = [json.loads(line)["instruction"] for line in f][:300]
    for texts in (real[::7][:300], conformance):
        flags = rouge_filter(texts)
        assert flags == bruteforce_filter(texts)
        assert not all(flags)  # the lists do hold near duplicates


def test_rouge_filter_reports_the_maximum_f():
    f = RougeLFilter(0.5)
    for t in ["write a poem about the sea", "a b c d e f g h", "write a poem about the blue sea"]:
        f.add(t, t)
    score, label = f.match("write a poem about the blue sea today", best=True)
    expected = max(
        SCORER.score("write a poem about the blue sea today", k)["rougeL"].fmeasure
        for k in ["write a poem about the sea", "a b c d e f g h", "write a poem about the blue sea"]
    )
    assert score == expected and label == "write a poem about the blue sea"
    assert f.match("zzz qqq") is None


def test_rouge_filter_against_pool_counts_as_kept():
    seeds = ["Write a poem about the ocean."]
    texts = ["write a poem about the ocean", "Summarize this article in two sentences."]
    assert rouge_filter(texts, 0.7, against=seeds) == [False, True]
    assert rouge_filter(texts) == [True, True]


def test_rouge_filter_examples_compares_user_turns_only():
    def ex(user: str, answer: str, system: str | None = None) -> Example:
        msgs = ([Message("system", system)] if system else []) + [Message("user", user), Message("assistant", answer)]
        return Example(messages=tuple(msgs))

    rows = [
        ex("Name three fruits.", "apple banana cherry"),
        ex("Name three fruits.", "something entirely different here", system="be brief and kind"),
        ex("Explain photosynthesis to a child.", "apple banana cherry"),
    ]
    assert rouge_filter_examples(rows) == [rows[0], rows[2]]


# ---------------------------------------------------------------- exact and MinHash


def test_exact_key_normalizes_case_punctuation_and_space():
    assert exact_dedup(["Hello,  World!", "hello world", "hello  world.", "hello there"]) == [True, False, False, True]
    a = Example(messages=(Message("user", "What is 2+2?"), Message("assistant", "Four.")))
    b = Example(messages=(Message("user", "what is 22"), Message("assistant", "four")))
    c = Example(messages=(Message("user", "What is 2+2?"), Message("assistant", "4")))
    assert example_key(a) == example_key(b) != example_key(c)
    assert example_key(a, "instruction") == example_key(c, "instruction")


def _words(rng: random.Random, n: int) -> list[str]:
    return [f"w{rng.randrange(3000)}" for _ in range(n)]


def test_minhash_finds_near_duplicates_and_keeps_the_first():
    rng = random.Random(3)
    base = _words(rng, 120)
    near = list(base)
    near[60] = "changed"  # one word: 5 of 116 shingles differ, Jaccard ~0.92
    other = _words(rng, 120)
    texts = [" ".join(base), " ".join(other), " ".join(near), " ".join(base).upper() + " !!"]
    assert minhash_dedup(texts, threshold=0.8) == [True, True, False, False]
    assert minhash_dedup(texts[::-1], threshold=0.8) == [True, False, True, False]


def test_minhash_short_and_empty_texts():
    assert minhash_dedup(["a b", "A, b!", "a c", "", "..."]) == [True, False, True, True, True]


def test_vectorized_shingle_hashes_equal_the_scalar_definition():
    hasher = MinHasher(ngram=5)
    rng = random.Random(2)
    texts = ["", "!!", "one", "a b c d e", "a b c d e f", "Hello, World: 42 times!", "x" * 3000 + " y z"]
    texts += [" ".join(_words(rng, rng.randint(1, 40))) for _ in range(30)]
    for text in texts:
        assert hasher.shingle_hashes(text).tolist() == [shingle_hash32(s) for s in hasher.shingles(text)]
    assert hasher.shingles("A b, C d e f!") == [b"a b c d e", b"b c d e f"]
    assert hasher.shingles("A b") == [b"a b"] and hasher.shingles("?") == []


def test_minhash_signature_and_bands_equal_datasketch():
    datasketch = pytest.importorskip("datasketch")
    from datasketch.lsh import _optimal_param

    hasher = MinHasher(num_perm=128, seed=1)
    for text in ["Write a short story about a robot who learns to paint, in under 200 words.", "tiny"]:
        m = datasketch.MinHash(num_perm=128, seed=1, hashfunc=shingle_hash32)
        m.update_batch(hasher.shingles(text))
        assert (m.hashvalues == hasher.signature(text)).all()
    for t in (0.5, 0.7, 0.8, 0.85, 0.9):
        assert lsh_params(t, 128) == _optimal_param(t, 128, 0.5, 0.5)


def test_minhash_decisions_equal_datasketch_lsh():
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(11)
    bases = [_words(rng, rng.randint(20, 60)) for _ in range(15)]
    texts = []
    for _ in range(150):
        w = list(rng.choice(bases))
        for _ in range(rng.randint(0, 6)):
            w[rng.randrange(len(w))] = f"w{rng.randrange(3000)}"
        texts.append(" ".join(w))
    hasher = MinHasher()
    lsh = datasketch.MinHashLSH(threshold=0.7, num_perm=128)
    expected = []
    for i, t in enumerate(texts):
        m = datasketch.MinHash(num_perm=128, hashfunc=shingle_hash32)
        m.update_batch(hasher.shingles(t))
        keep = not lsh.query(m)
        if keep:
            lsh.insert(i, m)
        expected.append(keep)
    assert minhash_dedup(texts, threshold=0.7) == expected
    assert 0 < sum(expected) < len(texts)


# ---------------------------------------------------------------- file API


def _conv(user: str, answer: str) -> Example:
    return Example(messages=(Message("user", user), Message("assistant", answer)))


def _rejects(summary) -> list[dict]:
    return [json.loads(line) for line in summary.rejects_path.read_text().splitlines()]


def test_dedup_file_accounts_for_every_row(tmp_path):
    rng = random.Random(5)
    long = " ".join(_words(rng, 80))
    rows = [
        _conv("Name three fruits.", "Apple, banana, cherry."),  # 1 kept
        _conv("name three fruits", "apple banana cherry"),  # 2 exact duplicate of 1
        _conv("Tell me about it.", long),  # 3 kept
        _conv("Tell me about it!", long.replace("w", "v", 1)),  # 4 MinHash near duplicate of 3
        _conv("Name three fruits, please.", "Pear."),  # 5 ROUGE-L duplicate of 1
        _conv("Explain gravity to a child.", "Things fall down."),  # 6 kept
    ]
    inp = write_examples(rows, tmp_path / "in.jsonl")
    s = dedup_file(inp, tmp_path / "out.jsonl", exact=True, minhash=0.7, rouge_l=0.7)
    assert (s.n_in, s.n_kept) == (6, 3)
    assert s.rejected_by_reason == {"exact_duplicate": 1, "minhash_duplicate": 1, "rouge_l_duplicate": 1}
    assert s.n_kept + s.n_rejected == s.n_in
    kept = list(read_examples(s.output))
    assert [e.messages[0].content for e in kept] == [
        "Name three fruits.",
        "Tell me about it.",
        "Explain gravity to a child.",
    ]
    rej = _rejects(s)
    assert [(r["line"], r["reason"]) for r in rej] == [
        (2, "exact_duplicate"),
        (4, "minhash_duplicate"),
        (5, "rouge_l_duplicate"),
    ]
    assert all(r["file"] == str(inp) and r["detail"] and json.loads(r["raw"])["messages"] for r in rej)
    assert "line 1" in rej[0]["detail"] and "line 3" in rej[1]["detail"] and "line 1" in rej[2]["detail"]


def test_dedup_file_rouge_alone_is_the_self_instruct_filter(tmp_path):
    texts = ["Name three fruits.", "Name three fruits.", "Name three red fruits.", "Explain gravity."]
    inp = write_examples([_conv(t, f"answer {i}") for i, t in enumerate(texts)], tmp_path / "in.jsonl")
    s = dedup_file(inp, tmp_path / "out.jsonl", rouge_l=0.7)
    assert [e.messages[0].content for e in read_examples(s.output)] == [
        t for t, keep in zip(texts, reference_filter(texts)) if keep
    ]
    assert set(s.rejected_by_reason) == {"rouge_l_duplicate"}
    # at threshold 1.0 nothing is similar enough, and exact dedup is off unless asked
    assert dedup_file(inp, tmp_path / "o2.jsonl", rouge_l=1.0).n_kept == 4
    assert dedup_file(inp, tmp_path / "o3.jsonl", exact=True, rouge_l=1.0).n_kept == 4  # answers differ
    assert dedup_file(inp, tmp_path / "o4.jsonl", on="instruction").n_kept == 3


def test_dedup_file_errors(tmp_path):
    bad = tmp_path / "raw.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n')
    with pytest.raises(DataError, match="raw.jsonl:1"):
        dedup_file(bad, tmp_path / "out.jsonl")
    good = write_examples([_conv("a", "b")], tmp_path / "in.jsonl")
    with pytest.raises(ConfigError):
        dedup_file(good, tmp_path / "out.jsonl", exact=False)
    with pytest.raises(ConfigError):
        dedup_file(good, tmp_path / "out.jsonl", minhash=1.5)
