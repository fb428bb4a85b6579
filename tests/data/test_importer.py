"""import_files: rows routed to OUT or rejects (with file, line, reason), conservation, strictness, real data."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instillm.data.importer import ImportSummary, import_files, import_mt_bench, read_examples, rejects_path_for
from instillm.errors import ConfigError, DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
GOOD = {"instruction": "Say hi.", "output": "Hi!"}


def lines(path: Path) -> list[dict]:
    """The JSON lines of a file."""
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSONL; bytes are written verbatim, str as a line, anything else as JSON."""
    out = b""
    for r in rows:
        out += r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()
        out += b"\n"
    path.write_bytes(out)
    return path


def run(tmp_path: Path, rows: list, name: str = "in.jsonl", **kw) -> tuple[ImportSummary, list[dict], list[dict]]:
    """Import one JSONL built from rows; returns the summary, OUT rows and rejects."""
    src = write_jsonl(tmp_path / name, rows)
    summary = import_files([src], tmp_path / "out.jsonl", **kw)
    return summary, lines(summary.output), lines(summary.rejects_path)


def only_reject(tmp_path: Path, bad, fmt: str = "auto") -> dict:
    """Import [GOOD, bad] and return the single reject (which must be line 2)."""
    summary, out, rejects = run(tmp_path, [GOOD, bad], format=fmt)
    assert [r["id"] for r in out] == ["in-1"]
    (reject,) = rejects
    assert reject["file"] == str(tmp_path / "in.jsonl") and reject["line"] == 2
    assert summary.rejects_by_reason == {reject["reason"]: 1}
    return reject


# ---------------------------------------------------------------- one test per reject kind


def test_reject_malformed_json(tmp_path: Path) -> None:
    reject = only_reject(tmp_path, '{"instruction": "x", "output": ')
    assert reject["reason"] == "malformed_json" and reject["raw"] == '{"instruction": "x", "output": '


def test_reject_missing_field(tmp_path: Path) -> None:
    reject = only_reject(tmp_path, {"instruction": "x", "input": "y"}, fmt="alpaca")
    assert reject["reason"] == "missing_field" and "output" in reject["detail"]


def test_reject_wrong_typed_field(tmp_path: Path) -> None:
    assert only_reject(tmp_path, {"instruction": "x", "output": ["y"]})["reason"] == "wrong_type"


def test_reject_empty_response(tmp_path: Path) -> None:
    assert only_reject(tmp_path, {"instruction": "x", "output": "  \n"})["reason"] == "empty_response"


def test_reject_unknown_role(tmp_path: Path) -> None:
    conv = {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]}
    rows = [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}, conv]
    summary, out, rejects = run(tmp_path, rows)
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "unknown_role")]
    assert summary.formats == {str(tmp_path / "in.jsonl"): "sharegpt"}


def test_reject_non_alternating_turns(tmp_path: Path) -> None:
    bad = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, bad]
    _, _, rejects = run(tmp_path, rows)
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "non_alternating_turns")]


def test_reject_undecodable_bytes(tmp_path: Path) -> None:
    reject = only_reject(tmp_path, b'\xff\xfe{"instruction": "x", "output": "y"}')
    assert reject["reason"] == "undecodable_bytes"
    assert reject["raw"].endswith('{"instruction": "x", "output": "y"}')


def test_reject_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"\n\n")
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    summary = import_files([tmp_path / "empty.jsonl", good], tmp_path / "out.jsonl")
    assert lines(summary.rejects_path) == [
        {
            "file": str(tmp_path / "empty.jsonl"),
            "line": 0,
            "reason": "empty_file",
            "detail": "the input holds no row",
            "raw": "",
        }
    ]
    assert summary.rejects_by_reason == {"empty_file": 1}
    assert summary.empty_files == [str(tmp_path / "empty.jsonl")]
    # An empty file is not a row: the row invariant holds without it.
    assert (summary.rows_read, summary.rows_imported, summary.rows_rejected) == (1, 1, 0)


def test_unrecognised_file_rejects_every_row(tmp_path: Path) -> None:
    summary, out, rejects = run(tmp_path, [GOOD, {"foo": 1}], name="a.jsonl")
    assert summary.formats[str(tmp_path / "a.jsonl")] == "alpaca"
    write_jsonl(tmp_path / "b.jsonl", [{"foo": 1}, {"bar": 2}])
    with pytest.raises(DataError, match="no valid row"):
        import_files([tmp_path / "b.jsonl"], tmp_path / "o2.jsonl")
    assert [r["reason"] for r in lines(tmp_path / "o2.rejects.jsonl")] == ["unknown_format"] * 2


# ---------------------------------------------------------------- accounting and failure modes


def test_every_input_line_lands_exactly_once(tmp_path: Path) -> None:
    rows = [
        GOOD,
        "{not json",
        {"instruction": "x"},
        b"\xc3\x28",
        {**GOOD, "output": ""},
        [1],
        {**GOOD, "input": "ctx"},
        {"instruction": 5, "output": "y"},
        GOOD,
    ]
    summary, out, rejects = run(tmp_path, rows, format="alpaca")
    imported = [int(r["id"].rsplit("-", 1)[1]) for r in out]
    rejected = [r["line"] for r in rejects]
    assert sorted(imported + rejected) == list(range(1, len(rows) + 1))
    assert imported == [1, 7, 9]
    assert summary.rows_read == len(rows) == summary.rows_imported + summary.rows_rejected
    assert summary.examples_written == len(out) == 3
    assert sum(summary.rejects_by_reason.values()) == summary.rows_rejected == len(rejects) == 6
    assert summary.per_file == {str(tmp_path / "in.jsonl"): {"rows": 9, "imported": 3, "rejected": 6, "examples": 3}}


def test_rows_yielding_several_examples_count_once(tmp_path: Path) -> None:
    summary = import_files(
        [FIXTURES / "self_instruct.jsonl", FIXTURES / "oasst_flat.jsonl"], tmp_path / "out.jsonl", all_paths=True
    )
    assert summary.rows_read == 3 + 11 and summary.rows_imported == 14 and summary.rows_rejected == 0
    assert summary.examples_written == 4 + 4 + 1


def test_strict_raises_at_first_reject_and_writes_nothing(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD, GOOD, {"instruction": "x", "output": ""}, "{bad"])
    with pytest.raises(DataError, match=r"in\.jsonl:3: .*empty_response"):
        import_files([src], tmp_path / "out.jsonl", strict=True)
    assert list(tmp_path.iterdir()) == [src]  # no OUT, no rejects, no temp files


def test_no_valid_row_raises_and_keeps_rejects(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "x", "output": ""}])
    with pytest.raises(DataError, match=r"no valid row in .*in\.jsonl \(empty_response: 1\)"):
        import_files([src], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    assert [r["reason"] for r in lines(tmp_path / "out.rejects.jsonl")] == ["empty_response"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.rejects.jsonl"]


def test_unreadable_input_fails_before_writing(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    with pytest.raises(DataError, match="no such file"):
        import_files([good, tmp_path / "missing.jsonl"], tmp_path / "out.jsonl")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="not a saved dataset"):
        import_files([tmp_path / "dir"], tmp_path / "out.jsonl")
    with pytest.raises(DataError, match="more than once"):
        import_files([good, good], tmp_path / "out.jsonl")
    with pytest.raises(ConfigError, match="format 'nope'"):
        import_files([good], tmp_path / "out.jsonl", format="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "good.jsonl"]


def test_crash_mid_import_leaves_no_output(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD] * 5)
    (tmp_path / "out.jsonl").write_text("previous\n")

    def boom(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_files([src], tmp_path / "out.jsonl", progress=boom)
    assert (tmp_path / "out.jsonl").read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_progress_reports_every_row(tmp_path: Path) -> None:
    seen: list[int] = []
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD] * 2500 + ["{bad"])
    summary = import_files([src], tmp_path / "out.jsonl", progress=seen.append)
    assert sum(seen) == summary.rows_read == 2501 and len(seen) == 3


def test_rejects_path_naming() -> None:
    assert rejects_path_for("a/b/train.jsonl") == Path("a/b/train.rejects.jsonl")
    assert rejects_path_for("out.data") == Path("out.data.rejects.jsonl")


def test_lone_surrogate_is_a_reject_not_a_crash(tmp_path: Path) -> None:
    reject = only_reject(tmp_path, '{"instruction": "x", "output": "bad \\ud800 text"}')
    assert reject["reason"] == "invalid_unicode"


# ---------------------------------------------------------------- containers


def test_parquet_csv_and_dataset_dir_import(tmp_path: Path) -> None:
    import datasets

    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerows(rows + [{"instruction": "x", "input": "", "output": ""}])
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    summary = import_files([tmp_path / "p.parquet", tmp_path / "c.csv", tmp_path / "ds"], tmp_path / "out.jsonl")
    out = lines(summary.output)
    assert [r["id"] for r in out] == ["p-1", "p-2", "p-3", "c-2", "c-3", "c-4", "ds-1", "ds-2", "ds-3"]
    assert {r["messages"][1]["content"] for r in out} == {"0", "1", "2"}
    assert set(summary.formats.values()) == {"alpaca"}
    assert [(r["line"], r["reason"]) for r in lines(summary.rejects_path)] == [(5, "empty_response")]


def test_every_fixture_imports_without_rejects(tmp_path: Path) -> None:
    files = sorted(p for p in FIXTURES.iterdir() if p.name not in {"mt_bench_question.jsonl", "mt_bench_answers.jsonl"})
    summary = import_files(files, tmp_path / "out.jsonl")
    assert summary.rows_rejected == 0 and summary.rows_imported == summary.rows_read
    assert len(list(read_examples(summary.output))) == summary.examples_written


def test_read_examples_round_trip_and_errors(tmp_path: Path) -> None:
    summary = import_files([FIXTURES / "openai.jsonl"], tmp_path / "out.jsonl")
    examples = list(read_examples(summary.output))
    assert [e.id for e in examples] == ["openai-1", "openai-2"]
    assert [m.trained for m in examples[1].messages] == [False, False, False, False, True]
    write_jsonl(tmp_path / "bad.jsonl", [examples[0].to_dict(), {"messages": []}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: empty_conversation"):
        list(read_examples(tmp_path / "bad.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        list(read_examples(tmp_path / "nope.jsonl"))


def test_import_mt_bench_joins_answers(tmp_path: Path) -> None:
    examples = import_mt_bench(
        FIXTURES / "mt_bench_question.jsonl", FIXTURES / "mt_bench_answers.jsonl", output=tmp_path / "mt.jsonl"
    )
    (ex,) = examples
    assert [m.content for m in ex.messages[1::2]] == ["You are second.", "That cannot happen."]
    assert ex.meta["answer_model"] == "gpt-4" and ex.meta["reference"] == ["Second.", "Impossible."]
    assert ex.id == "mt_bench_question-2"
    assert [e.id for e in read_examples(tmp_path / "mt.jsonl")] == [ex.id]


# ---------------------------------------------------------------- real reference data


@pytest.fixture(scope="module")
def t0_import(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ImportSummary:
    files = sorted((shared_data / "t0_multitask").glob("*.jsonl"))
    assert len(files) == 294
    return import_files(files, tmp_path_factory.mktemp("t0") / "t0.jsonl")


def test_t0_counts(t0_import: ImportSummary) -> None:
    s = t0_import
    assert s.rows_read == 55_185 and s.examples_written == s.rows_imported == 53_785
    assert s.rows_rejected == 1_400
    # The 11 other trec templates are empty files in the source.
    assert s.rejects_by_reason == {"empty_response": 1_400, "empty_file": 11}


def test_t0_trec_rows_rejected_as_empty_response(t0_import: ImportSummary) -> None:
    rejects = lines(t0_import.rejects_path)
    rows = Counter(Path(r["file"]).stem for r in rejects if r["reason"] == "empty_response")
    assert set(rows.values()) == {200} and len(rows) == 7 and all(s.startswith("trec_") for s in rows)
    assert all(Path(r["file"]).stem.startswith("trec_") for r in rejects)


def test_t0_task_is_file_stem(t0_import: ImportSummary) -> None:
    tasks = Counter()
    with open(t0_import.output, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            assert row["id"].startswith(row["task"] + "-")
            assert row["source"] == row["task"] + ".jsonl"
            assert "<|endoftext|>" not in row["messages"][1]["content"]
            tasks[row["task"]] += 1
    assert len(tasks) == 294 - 18 and tasks["ag_news_classify"] > 0


def test_self_instruct_seeds_and_user_oriented(shared_data: Path, tmp_path: Path) -> None:
    seeds = shared_data / "self_instruct" / "seed_tasks.jsonl"
    n_instances = sum(len(json.loads(x)["instances"]) for x in seeds.read_text().splitlines())
    s = import_files([seeds], tmp_path / "seeds.jsonl")
    out = lines(s.output)
    assert len({r["meta"]["task_id"] for r in out}) == 175 and len(out) == s.examples_written == n_instances
    # Upstream names two different tasks (seed_task_92 and seed_task_160) "fact_verification".
    assert len({r["task"] for r in out}) == 174
    assert s.rows_rejected == 0
    user = import_files([shared_data / "self_instruct" / "user_oriented_instructions.jsonl"], tmp_path / "user.jsonl")
    assert user.formats and set(user.formats.values()) == {"self_instruct"}
    assert user.examples_written == 252 and user.rows_rejected == 0
    assert all(r["category"] for r in lines(user.output))


def test_alpaca_eval_outputs(shared_data: Path, tmp_path: Path) -> None:
    s = import_files([shared_data / "alpaca_eval" / "gpt4_outputs.json"], tmp_path / "ae.jsonl")
    assert s.examples_written == 805 and s.rows_rejected == 0
    first = lines(s.output)[0]
    assert first["meta"]["generator"] == "gpt4" and first["category"] == "helpful_base"


def test_mt_bench_join_on_shared_data(shared_data: Path) -> None:
    d = shared_data / "mt_bench"
    n_answers = len((d / "reference_answer_gpt4.jsonl").read_text().splitlines())
    examples = import_mt_bench(d / "question.jsonl", d / "reference_answer_gpt4.jsonl")
    assert len(examples) == n_answers == 30
    assert all(len(e.messages) == 4 for e in examples)
    assert {e.category for e in examples} == {"math", "reasoning", "coding"}


def test_oasst_layouts_give_identical_conversations(shared_data: Path, tmp_path: Path) -> None:
    d = shared_data / "formats"

    def conversations(name: str, all_paths: bool) -> list:
        s = import_files([d / name], tmp_path / f"{name}-{all_paths}.jsonl", all_paths=all_paths)
        assert s.rows_read == 100 and s.rows_rejected == 0
        return [(r["meta"]["message_tree_id"], r["messages"]) for r in lines(s.output)]

    best_tree, best_msg = (
        conversations("oasst_en_100_tree.jsonl", False),
        conversations("oasst_en_100_message.jsonl", False),
    )
    assert best_tree == best_msg and len(best_tree) == 100
    all_tree, all_msg = (
        conversations("oasst_en_100_tree.jsonl", True),
        conversations("oasst_en_100_message.jsonl", True),
    )
    assert all_tree == all_msg and len(all_tree) > len(best_tree)
    assert all(c in all_tree for c in best_tree)
    assert all(m[-1]["role"] == "assistant" for _, m in all_tree)


def test_anthropic_hh_all_rows_accounted_for(shared_data: Path, tmp_path: Path) -> None:
    s = import_files([shared_data / "formats" / "anthropic_hh_harmless_base_test.jsonl.gz"], tmp_path / "hh.jsonl")
    assert s.rows_read == 2_312 == s.rows_imported + s.rows_rejected
    # Observed: 4 transcripts end on an empty assistant turn, 8 have two assistant turns in a row.
    assert s.rejects_by_reason == {"empty_response": 4, "non_alternating_turns": 8}
    out = lines(s.output)
    assert all(r["meta"]["rejected"].startswith("\n\nHuman:") for r in out)
    assert all(m["content"] == m["content"].strip() for r in out for m in r["messages"])


def test_sharegpt_sample(shared_data: Path, tmp_path: Path) -> None:
    s = import_files([shared_data / "formats" / "sharegpt_fastchat_dummy_conversation.json"], tmp_path / "sg.jsonl")
    # The FastChat sample is clean: 500 human/gpt alternating conversations, none rejected.
    assert (s.rows_read, s.rows_imported, s.rows_rejected, s.examples_written) == (500, 500, 0, 500)
    out = lines(s.output)
    assert out[0]["meta"] == {"id": "identity_0"} and len(out[0]["messages"]) == 4
