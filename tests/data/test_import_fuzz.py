"""Fuzzing import_files with hypothesis, per format: random rows, malformed lines, random OpenAssistant trees
and damaged containers never raise anything but InstillmError, never hang, and every row read is kept or rejected."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from instillm.data.formats import FORMATS
from instillm.data.importer import ImportSummary, import_files, read_examples
from instillm.errors import InstillmError

FUZZ = settings(
    max_examples=60, deadline=5_000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
BOM = b"\xef\xbb\xbf"

# ---------------------------------------------------------------- strategies

texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "Hi", "<|endoftext|>", "\ud800", "a\u2028b", "\n\nHuman: a\n\nAssistant: b", "Human: a"]),
)
words = st.text("abc xyz\n\u00e9\u2028", min_size=1, max_size=8).filter(str.strip)  # usable prompt/answer text
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
roles = st.sampled_from(["user", "assistant", "system", "developer", "human", "gpt", "prompter", "tool", ""])


def either(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """A field value: usually a plausible one, sometimes any JSON value."""
    return st.one_of(plausible, plausible, json_values)


def record(
    fields: dict[str, st.SearchStrategy], required: dict[str, st.SearchStrategy] | None = None
) -> st.SearchStrategy:
    """Rows shaped like a format: either all `required` fields usable plus some optional ones (mostly valid),
    or any subset of every field, each plausible or not (mostly rejected)."""
    loose = st.fixed_dictionaries({}, optional={k: either(v) for k, v in {**(required or {}), **fields}.items()})
    if not required:
        return loose
    return st.one_of(
        st.fixed_dictionaries(required, optional={k: v for k, v in fields.items() if k not in required}), loose
    )


def chat(user: str, assistant: str, system: str = "system", n: int = 2) -> st.SearchStrategy:
    """Alternating turns (user first), optionally after a system turn, as (role, text) pairs."""
    pairs = st.lists(st.tuples(words, words), min_size=1, max_size=n).map(
        lambda ps: [(r, t) for q, a in ps for r, t in ((user, q), (assistant, a))]
    )
    return st.one_of(pairs, st.builds(lambda s, p: [(system, s), *p], words, pairs))


message = record({"role": roles, "content": texts, "train": st.booleans(), "weight": st.sampled_from([0, 1, 0.5])})
messages = st.one_of(
    chat("user", "assistant").map(lambda ps: [{"role": r, "content": t} for r, t in ps]), st.lists(message, max_size=4)
)
turns = st.one_of(
    chat("human", "gpt").map(lambda ps: [{"from": r, "value": t} for r, t in ps]),
    st.lists(record({"from": roles, "value": texts}), max_size=4),
)
transcript = chat("Human", "Assistant").map(lambda ps: "".join(f"\n\n{r}: {t}" for r, t in ps if r != "system"))
node_ids = st.sampled_from(["a", "b", "c", "d"])
oasst_node = st.recursive(
    record(
        {"message_id": node_ids, "role": roles, "text": texts, "rank": st.integers(-1, 2), "deleted": st.booleans()},
        {"role": st.sampled_from(["prompter", "assistant"]), "text": words},
    ),
    lambda inner: st.builds(lambda n, r: {**n, "replies": r}, inner, st.lists(inner, max_size=3)),
    max_leaves=10,
)
flat_message = st.fixed_dictionaries(
    {
        "message_id": node_ids,
        "parent_id": st.one_of(st.none(), node_ids),
        "message_tree_id": st.sampled_from(["T", "U"]),
        "role": st.sampled_from(["prompter", "assistant"]),
        "text": texts,
    },
    optional={"rank": st.integers(0, 2), "deleted": st.booleans()},
)


@st.composite
def flat_tree(draw: st.DrawFn) -> list[dict]:
    """The rows of one valid flat OpenAssistant tree (roles alternate by depth), in file order."""
    tree, n = draw(st.sampled_from(["T", "U", "V"])), draw(st.integers(2, 8))
    parents = [None] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
    return [
        {
            "message_id": f"{tree}{i}",
            "parent_id": None if p is None else f"{tree}{p}",
            "message_tree_id": tree,
            "role": "assistant" if depth[i] % 2 else "prompter",
            "text": draw(words),
            "rank": draw(st.integers(0, 2)),
        }
        for i, p in enumerate(parents)
    ]


RECORDS: dict[str, st.SearchStrategy] = {
    "alpaca": record({"input": texts, "system": texts, "dataset": texts}, {"instruction": words, "output": words}),
    "dolly": record({"context": texts, "category": texts}, {"instruction": words, "response": words}),
    "sharegpt": record({"system": texts, "id": texts}, {"conversations": turns}),
    "openai": record(
        {
            "id": st.sampled_from(["x", "in-1", "in-2"]),
            "source": texts,
            "task": texts,
            "meta": st.dictionaries(texts, json_values, max_size=2),
        },
        {"messages": messages},
    ),
    "oasst": st.one_of(
        flat_message, oasst_node, record({"tree_state": texts}, {"message_tree_id": node_ids, "prompt": oasst_node})
    ),
    "hh": record({"rejected": texts}, {"chosen": st.one_of(transcript, messages, texts)}),
    "openorca": record({"system_prompt": texts, "id": texts}, {"question": words, "response": words}),
    "flan": record(
        {"task_name": texts, "template_type": texts, "_task_source": texts, "_template_idx": st.integers(0, 3)},
        {"inputs": words, "targets": words},
    ),
    "prompt_completion": record({}, {"prompt": words, "completion": words}),
    "self_instruct": record(
        {"name": texts, "id": texts, "is_classification": st.booleans()},
        {"instruction": words, "instances": st.lists(record({"input": texts}, {"output": words}), max_size=3)},
    ),
    "mt_bench": record(
        {"category": texts, "choices": st.lists(record({}, {"turns": st.lists(words, max_size=3)}), max_size=2)},
        {
            "question_id": st.integers(0, 3),
            "turns": st.lists(words, min_size=1, max_size=3),
            "reference": st.lists(words, max_size=3),
        },
    ),
}

malformed = st.one_of(
    st.sampled_from(
        [
            b"{",
            b"[1, 2",
            b"NaN",
            b'{"a": NaN}',
            b'{"a": -Infinity}',
            b'"text"',
            b"[]",
            b"\xff\xfe{}",
            b"[" * 3000 + b"]" * 3000,
            b'{"n": ' + b"9" * 5000 + b"}",
            BOM + b"{}",
            b"\r",
            b"   ",
        ]
    ),
    st.binary(max_size=24),
    st.text(max_size=24).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def dumps(value: Any) -> bytes:
    """One JSONL line as some producer would write it (non-finite floats as NaN/Infinity)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def jsonl_lines(fmt: str) -> st.SearchStrategy:
    """Lines of a JSONL file for `fmt` (any format's rows for auto): records, random JSON and garbage."""
    records = st.sampled_from(sorted(RECORDS)).flatmap(RECORDS.get) if fmt == "auto" else RECORDS[fmt]
    line = st.one_of(records.map(dumps), records.map(dumps), json_values.map(dumps), malformed).map(
        lambda b: b.replace(b"\n", b" ")
    )
    lines = st.lists(line, min_size=1, max_size=8)
    if fmt in ("auto", "oasst"):  # whole flat trees among the rows: every layout of a tree gets fuzzed
        trees = flat_tree().map(lambda rows: [dumps(r) for r in rows])
        lines = st.builds(lambda a, t, b: a + t + b, lines, trees, st.lists(line, max_size=2))
    return lines


# ---------------------------------------------------------------- checks


def rows_in(lines: list[bytes]) -> int:
    """How many rows a JSONL reader must see: non-blank lines (a leading BOM and trailing CR removed)."""
    n = 0
    for i, line in enumerate(lines, 1):
        data = line.rstrip(b"\r\n")
        data = data[3:] if i == 1 and data.startswith(BOM) else data
        n += bool(data.strip())
    return n


def strict_lines(path: Path) -> list[dict]:
    """JSON lines parsed strictly: NaN / Infinity are not JSON."""

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} written to {path}")

    return [json.loads(x, parse_constant=refuse) for x in path.read_text(encoding="utf-8").split("\n")[:-1]]


def note(outcome: str) -> None:
    """Count an outcome in hypothesis' statistics (`--hypothesis-show-statistics`)."""
    if currently_in_test_context():
        event(outcome)


def check_import(src: Path, fmt: str, all_paths: bool, expected_rows: int | None) -> ImportSummary | None:
    """Import src; success must account for every row, failure must be an InstillmError (no valid row: rejects kept)."""
    out = src.parent / "out.jsonl"
    try:
        summary = import_files([src], out, format=fmt, all_paths=all_paths)
    except InstillmError as e:
        note(f"{type(e).__name__}: {'no valid row' if 'no valid row' in str(e) else 'other'}")
        if "no valid row" in str(e) and expected_rows is not None:
            rejects = strict_lines(src.parent / "out.rejects.jsonl")
            assert sum(r["line"] > 0 for r in rejects) == expected_rows and not out.exists()
        assert "\n" not in str(e)
        assert {p.name for p in src.parent.iterdir()} <= {src.name, "out.rejects.jsonl"}  # no temp file left
        return None
    note("imported")
    assert summary.rows_read == summary.rows_imported + summary.rows_rejected
    assert expected_rows is None or summary.rows_read == expected_rows
    written = strict_lines(summary.output)
    assert len(written) == summary.examples_written == len(list(read_examples(summary.output)))
    assert len({r["id"] for r in written}) == len(written)
    assert len(strict_lines(summary.rejects_path)) == summary.rows_rejected + len(summary.empty_files)
    assert sorted(p.name for p in src.parent.iterdir()) == sorted([src.name, "out.jsonl", "out.rejects.jsonl"])
    return summary


# ---------------------------------------------------------------- tests


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["auto", *sorted(FORMATS)])
@FUZZ
@given(data=st.data())
def test_fuzz_jsonl_rows(fmt: str, data: st.DataObject) -> None:
    lines = data.draw(jsonl_lines(fmt), label="lines")
    all_paths = data.draw(st.booleans(), label="all_paths")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl"
        src.write_bytes(b"\n".join(lines) + b"\n")
        check_import(src, fmt, all_paths, rows_in(lines))


@pytest.mark.timeout(60)
@FUZZ
@given(
    rows=st.lists(st.one_of(flat_message.map(lambda r: [r]), flat_tree()), min_size=1, max_size=5).map(
        lambda groups: [r for g in groups for r in g]
    ),
    all_paths=st.booleans(),
)
def test_fuzz_openassistant_trees(rows: list[dict], all_paths: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl"
        src.write_bytes(b"".join(dumps(r) + b"\n" for r in rows))
        check_import(src, "oasst", all_paths, len(rows))


@pytest.mark.timeout(60)
@FUZZ
@given(data=st.data())
def test_fuzz_damaged_gzip(data: st.DataObject) -> None:
    lines = data.draw(jsonl_lines("auto"), label="lines")
    packed = bytearray(gzip.compress(b"\n".join(lines) + b"\n"))
    cut = data.draw(st.integers(0, len(packed)), label="cut")
    flip = st.tuples(st.integers(0, len(packed) - 1), st.integers(1, 255))
    flips = data.draw(st.lists(flip, max_size=3), label="flips")
    for at, mask in flips:
        packed[at] ^= mask
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl.gz"
        src.write_bytes(bytes(packed[:cut] if data.draw(st.booleans(), label="truncate") else packed))
        check_import(src, "auto", False, None)


@pytest.mark.timeout(60)
@FUZZ
@given(doc=st.one_of(json_values, st.lists(st.one_of(*RECORDS.values()), max_size=6)), text=st.text(max_size=60))
def test_fuzz_json_and_csv_documents(doc: Any, text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "in.json").write_bytes(dumps(doc))
        check_import(Path(d) / "in.json", "auto", False, None)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "in.csv").write_text("instruction,output\n" + text, encoding="utf-8", errors="surrogatepass")
        check_import(Path(d) / "in.csv", "auto", False, None)


def test_fuzz_checker_sees_a_lost_row(tmp_path: Path) -> None:
    """The accounting check itself: a file with more rows than the importer reports is caught."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(dumps({"instruction": "a", "output": "b"}) + b"\n")
    with pytest.raises(AssertionError):
        check_import(src, "auto", False, 2)
